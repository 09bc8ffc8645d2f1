# Quick start: `make demo` (set up, convert the bundled example, print the report) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
BUNDLE ?= build/digits-bundle

.PHONY: demo test bench lint typecheck example clean services services-stop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per install set; re-run when the project's requirements change.
$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[onnx]'
	touch $@

# The strict editable install links each module into build/__editable__* (what mypy reads); the
# package folders are prerequisites so that adding or removing a module re-links the tree.
PKG_DIRS := edgekit edgekit/schemas edgekit/ota edgekit/ota/device edgekit/ota/service edgekit/cli converters converters/passes converters/mil runtimes web web/src web/demo
$(VENV)/.test-installed: pyproject.toml constraints.txt $(PKG_DIRS) | $(BIN)/python
	$(PIP) -e '.[all,dev]' --config-settings editable_mode=strict
	touch $@ $(VENV)/.demo-installed

# npm's onnxruntime-web lets convert check each web artifact on the wasm backend browsers run.
demo: $(VENV)/.demo-installed web/node_modules/.package-lock.json
	$(BIN)/edgekit convert examples/digits/digits.onnx \
		--calibration examples/digits/digits.npz \
		--target onnx-web --target onnx-web-fp16 --target onnx-web-int8 \
		--name digits --version 1.0.0 --out $(BUNDLE) --overwrite
	$(BIN)/edgekit inspect $(BUNDLE)

# The report test renders pages in Debian's Chromium (playwright drives it; `playwright install`
# would download a browser and fails offline). Needs root and apt where Chromium is missing.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium at $(CHROMIUM) (Debian: apt-get install chromium)"; exit 1; }
	apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# QEMU's user-mode emulator runs the int8 checks as an AVX2-only CPU (no VNNI) on any x86 host.
QEMU ?= /usr/bin/qemu-x86_64
$(QEMU):
	@command -v apt-get >/dev/null || { echo "install QEMU user-mode emulation at $(QEMU) (Debian: apt-get install qemu-user)"; exit 1; }
	apt-get install -y -qq qemu-user >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null; }

# The TUF conformance suite (android-demo/ota-client/tuf-conformance, a copy of upstream's) in its own
# venv, with its own pins; it runs the Kotlin client's CLI under Debian's faketime.
FAKETIME ?= /usr/bin/faketime
$(FAKETIME):
	@command -v apt-get >/dev/null || { echo "install faketime at $(FAKETIME) (Debian: apt-get install faketime)"; exit 1; }
	apt-get install -y -qq faketime >/dev/null || { apt-get update -qq && apt-get install -y -qq faketime >/dev/null; }

# tests/test_ota_nginx.py runs examples/nginx/edgekit-ota.conf in Debian's nginx.
NGINX ?= /usr/sbin/nginx
$(NGINX):
	@command -v apt-get >/dev/null || { echo "install nginx at $(NGINX) (Debian: apt-get install nginx)"; exit 1; }
	apt-get install -y -qq nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }

# tests/test_ota_fleet.py scrapes the fleet's /metrics with Debian's Prometheus (examples/prometheus).
PROMETHEUS ?= /usr/bin/prometheus
$(PROMETHEUS):
	@command -v apt-get >/dev/null || { echo "install prometheus at $(PROMETHEUS) (Debian: apt-get install prometheus)"; exit 1; }
	apt-get install -y -qq --no-install-recommends prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

TUFC := build/tuf-conformance
$(TUFC)/.installed: android-demo/ota-client/tuf-conformance/pyproject.toml | $(FAKETIME)
	rm -rf $(TUFC) && mkdir -p $(TUFC)
	cp -r android-demo/ota-client/tuf-conformance $(TUFC)/src
	$(PYTHON) -m venv $(TUFC)/venv
	$(TUFC)/venv/bin/python -m pip install --quiet --disable-pip-version-check ./$(TUFC)/src
	touch $@

# onnxruntime-web for the browser library, demo and tests, pinned by web/package-lock.json.
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	touch $@

# The OTA backend tests use real servers on loopback: PostgreSQL and OpenStack Swift's S3 API
# (Debian packages, installed by the scripts where missing; they need root and apt).
SERVICES ?= build/services
SERVICE_ENV := EDGEKIT_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5499/postgres \
	EDGEKIT_TEST_S3='s3://edgekit?endpoint=http://127.0.0.1:9103' AWS_ACCESS_KEY_ID=test:tester AWS_SECRET_ACCESS_KEY=testing

services:
	bash tests/services/up.sh $(SERVICES)

services-stop:
	bash tests/services/down.sh $(SERVICES)

test: $(VENV)/.test-installed $(CHROMIUM) $(QEMU) $(NGINX) $(PROMETHEUS) $(TUFC)/.installed web/node_modules/.package-lock.json
	$(BIN)/python -m ruff check .
	MYPYPATH=$$(ls -d build/__editable__*) $(BIN)/python -m mypy -p edgekit
	bash tests/services/up.sh $(SERVICES)
	$(SERVICE_ENV) $(BIN)/python -m pytest; rc=$$?; bash tests/services/down.sh $(SERVICES); exit $$rc

# Benchmarks (minutes each; results go in benchmarks/RESULTS.md by hand). facenet-pytorch only
# carries O-Net's weights here: its declared dependencies (torchvision) would pull a CUDA torch.
bench: $(VENV)/.test-installed $(CHROMIUM) web/node_modules/.package-lock.json
	$(PIP) --no-deps facenet-pytorch==2.6.0
	$(PIP) bsdiff4==1.3.2
	$(BIN)/python benchmarks/bench_onnx_web.py
	$(BIN)/python benchmarks/bench_tflite.py
	$(BIN)/python benchmarks/bench_coreml.py
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_web.py
	$(BIN)/python benchmarks/bench_delta.py

# Regenerate examples/digits (trains the CNN; needs the torch extra).
example: $(VENV)/.test-installed
	$(BIN)/python examples/digits/make_digits.py
	$(BIN)/python examples/digits/make_digits_keras.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache web/node_modules

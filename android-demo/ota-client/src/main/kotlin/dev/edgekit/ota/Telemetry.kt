package dev.edgekit.ota

/**
 * Fleet telemetry in the format the Python device and the browser library send (edgekit.ota.telemetry:
 * an OTLP/HTTP JSON metrics request); tests/data/telemetry-vectors.json holds the answers all three give.
 *
 * The app records each inference into a [ModelStats] (the interpreter it runs is the app's, LiteRT on
 * Android); [Telemetry.batch] takes what each one did since the last batch, and
 * [ModelUpdater.queueTelemetry] puts it in the outbox, which survives restarts, keeps at most 1000
 * entries (oldest dropped) and sends them with the device's token. Never inputs or outputs.
 */
class LatencyHistogram {
    val counts = LongArray(OCTAVES * SUB)
    var count = 0L
    var totalNs = 0L
    var minNs = NEVER
    var maxNs = 0L

    fun add(ns: Long) {
        val d = if (ns < 0) 0L else ns
        val index = bucket(d)
        counts[index] = counts[index] + 1L
        count += 1
        totalNs += d
        if (d > maxNs) maxNs = d
        if (d < minNs) minNs = d
    }

    fun copy(): LatencyHistogram = LatencyHistogram().also {
        counts.copyInto(it.counts)
        it.count = count; it.totalNs = totalNs; it.minNs = minNs; it.maxNs = maxNs
    }

    /** The runs recorded after [earlier], an older copy of this histogram. */
    fun since(earlier: LatencyHistogram): LatencyHistogram {
        val out = LatencyHistogram()
        for (i in counts.indices) out.counts[i] = counts[i] - earlier.counts[i]
        out.count = count - earlier.count
        out.totalNs = totalNs - earlier.totalNs
        if (out.count > 0) {
            val lo = out.counts.indexOfFirst { it != 0L }
            val hi = out.counts.indexOfLast { it != 0L }
            out.minNs = maxOf(minNs, if (lo > 0) upper(lo - 1) + 1 else 0L)
            out.maxNs = minOf(maxNs, upper(hi))
        }
        return out
    }

    /** OpenTelemetry's explicit-bucket form (seconds), trimmed to the buckets that hold runs. */
    fun toExplicit(): Map<String, Any?> {
        val lo = counts.indexOfFirst { it != 0L }
        if (lo < 0) return linkedMapOf("count" to 0L, "sum" to 0.0, "bucketCounts" to listOf(0L), "explicitBounds" to emptyList<Double>())
        val hi = counts.indexOfLast { it != 0L }
        return linkedMapOf("count" to count, "sum" to totalNs / 1e9, "min" to minNs / 1e9, "max" to maxNs / 1e9,
            "bucketCounts" to counts.slice(lo..hi), "explicitBounds" to (lo until hi).map { upper(it) / 1e9 })
    }

    /** The q-th percentile (0-100) in ms: the upper edge of its bucket, capped at the max. */
    fun percentile(q: Double): Double {
        if (count == 0L) return 0.0
        val rank = maxOf(1L, (q / 100.0 * count + 0.999999).toLong())
        var seen = 0L
        for (i in counts.indices) {
            seen += counts[i]
            if (seen >= rank) return minOf(upper(i), maxNs) / 1e6
        }
        return maxNs / 1e6
    }

    companion object {
        private const val SUB_BITS = 3
        private const val SUB = 1 shl SUB_BITS
        private const val OCTAVES = 40
        private const val LAST = OCTAVES * SUB - 1
        private const val NEVER = 1L shl 62

        fun bucket(ns: Long): Int {
            if (ns < SUB) return if (ns > 0) ns.toInt() else 0
            val octave = (64 - java.lang.Long.numberOfLeadingZeros(ns)) - SUB_BITS
            return minOf(octave * SUB + ((ns ushr (octave - 1)) and (SUB - 1).toLong()).toInt(), LAST)
        }

        fun upper(index: Int): Long {
            if (index < SUB) return index.toLong()
            val octave = index / SUB
            val sub = index % SUB
            return (((SUB or sub) + 1).toLong() shl (octave - 1)) - 1
        }
    }
}

/** What one model release's artifact did on the device since the last batch. */
class TelemetryPoint(
    val model: String, val channel: String, val release: Long, val artifact: String, val provider: String,
    val passedOver: String, val latency: LatencyHistogram, val errors: Map<String, Long>, val loadSeconds: Double?
)

/** One loaded model, as the app runs it: record each inference (or its failure) here. Thread-safe. */
class ModelStats(val model: String, val channel: String, val release: Long, val artifact: String, val provider: String,
                 val passedOver: String = "", val loadSeconds: Double? = null) {
    private val histogram = LatencyHistogram()
    private val errorKinds = HashMap<String, Long>()
    private var sent = LatencyHistogram()
    private var sentErrors: Map<String, Long> = emptyMap()
    private var loadSent = false

    @Synchronized fun recordRun(nanos: Long) = histogram.add(nanos)

    /** A failed inference, by kind: the exception's class name, as the Python runtime names them. */
    @Synchronized fun recordError(kind: String) { errorKinds[kind] = (errorKinds[kind] ?: 0L) + 1 }

    /** What happened since the last call, or null when nothing did. */
    @Synchronized fun takeDelta(): TelemetryPoint? {
        val now = histogram.copy()
        val delta = now.since(sent)
        val errors = errorKinds.filter { (k, n) -> n > (sentErrors[k] ?: 0L) }.mapValues { (k, n) -> n - (sentErrors[k] ?: 0L) }
        if (delta.count == 0L && errors.isEmpty() && loadSent) return null
        val point = TelemetryPoint(model, channel, release, artifact, provider, passedOver, delta, errors,
            if (loadSent) null else loadSeconds)
        sent = now
        sentErrors = HashMap(errorKinds)
        loadSent = true
        return point
    }
}

class Telemetry(val deviceId: String, val resource: Map<String, String>, private val everyMillis: Long = 300_000) {
    private val tracked = ArrayList<ModelStats>()
    private var lastNs = nowNs()
    private var lastSent = 0L

    @Synchronized fun track(stats: ModelStats) { tracked.add(stats) }

    @Synchronized fun untrack(stats: ModelStats) { tracked.remove(stats) }

    fun due(): Boolean = System.currentTimeMillis() - lastSent >= everyMillis

    /** The OTLP request for what the tracked models did since the last batch (null when nothing). */
    @Synchronized fun batch(): Map<String, Any?>? {
        val points = tracked.take(MAX_POINTS).mapNotNull { it.takeDelta() }
        val end = nowNs()
        val start = lastNs
        lastNs = end
        lastSent = System.currentTimeMillis()
        return if (points.isEmpty()) null else makeBatch(deviceId, resource, points, start, end)
    }

    companion object {
        const val MAX_POINTS = 64

        /** Nanoseconds since the epoch (millisecond resolution, as the wall clock gives it). */
        fun nowNs(): Long = System.currentTimeMillis() * 1_000_000L

        private fun attrs(values: Map<String, Any?>): List<Any?> = values.map { (k, v) ->
            linkedMapOf("key" to k, "value" to if (v is Long || v is Int) linkedMapOf("intValue" to v.toString())
            else linkedMapOf("stringValue" to v.toString()))
        }

        /** The same request edgekit.ota.telemetry.make_batch writes, field for field. */
        fun makeBatch(deviceId: String, resource: Map<String, String>, points: List<TelemetryPoint>, startNs: Long, endNs: Long,
                      scopeVersion: String = ""): Map<String, Any?> {
            val durations = ArrayList<Any?>()
            val errors = ArrayList<Any?>()
            val loads = ArrayList<Any?>()
            for (p in points) {
                val base = linkedMapOf<String, Any?>("edgekit.model" to p.model, "edgekit.channel" to p.channel,
                    "edgekit.release" to p.release, "edgekit.artifact" to p.artifact, "edgekit.provider" to p.provider)
                if (p.passedOver.isNotEmpty()) base["edgekit.providers.passed_over"] = p.passedOver
                val h = p.latency.toExplicit()
                val dp = linkedMapOf<String, Any?>("attributes" to attrs(base), "startTimeUnixNano" to startNs.toString(),
                    "timeUnixNano" to endNs.toString(), "count" to h["count"].toString(), "sum" to h["sum"])
                if (h["count"] != 0L) { dp["min"] = h["min"]; dp["max"] = h["max"] }
                dp["bucketCounts"] = (h["bucketCounts"] as List<*>).map { it.toString() }
                dp["explicitBounds"] = h["explicitBounds"]
                durations.add(dp)
                for (kind in p.errors.keys.sorted()) {
                    val n = p.errors.getValue(kind)
                    if (n == 0L) continue
                    errors.add(linkedMapOf("attributes" to attrs(base + ("error.type" to kind)), "startTimeUnixNano" to startNs.toString(),
                        "timeUnixNano" to endNs.toString(), "asInt" to n.toString()))
                }
                if (p.loadSeconds != null) {
                    loads.add(linkedMapOf("attributes" to attrs(base), "timeUnixNano" to endNs.toString(), "asDouble" to p.loadSeconds))
                }
            }
            val metrics = arrayListOf<Any?>(linkedMapOf("name" to "edgekit.inference.duration", "unit" to "s",
                "description" to "model inference duration",
                "histogram" to linkedMapOf("aggregationTemporality" to 1L, "dataPoints" to durations)))
            if (errors.isNotEmpty()) {
                metrics.add(linkedMapOf("name" to "edgekit.inference.errors", "unit" to "{error}", "description" to "failed inferences",
                    "sum" to linkedMapOf("aggregationTemporality" to 1L, "isMonotonic" to true, "dataPoints" to errors)))
            }
            if (loads.isNotEmpty()) {
                metrics.add(linkedMapOf("name" to "edgekit.model.load.duration", "unit" to "s", "description" to "model load duration",
                    "gauge" to linkedMapOf("dataPoints" to loads)))
            }
            val resourceAttrs = linkedMapOf<String, Any?>("device.id" to deviceId)
            resourceAttrs.putAll(resource)
            return linkedMapOf("resourceMetrics" to listOf(linkedMapOf(
                "resource" to linkedMapOf("attributes" to attrs(resourceAttrs)),
                "scopeMetrics" to listOf(linkedMapOf("scope" to linkedMapOf("name" to "edgekit", "version" to scopeVersion),
                    "metrics" to metrics)))))
        }

        /** This device's class: OS, CPU architecture, accelerator family (the app says), the app's tier. */
        fun deviceClass(accelerator: String, tier: String = ""): Map<String, String> {
            val os = System.getProperty("os.name", "unknown").toLowerCase()
            val vendor = System.getProperty("java.vendor", "").toLowerCase()
            val arch = when (val a = System.getProperty("os.arch", "unknown").toLowerCase()) {
                "x86_64", "amd64" -> "amd64"
                "aarch64", "arm64" -> "arm64"
                "i386", "i686", "x86" -> "x86"
                "armv7l", "arm" -> "arm32"
                else -> a
            }
            val osType = when {
                "android" in vendor -> "android"
                "linux" in os -> "linux"
                "mac" in os -> "darwin"
                "windows" in os -> "windows"
                else -> "unknown"
            }
            return linkedMapOf("os.type" to osType, "host.arch" to arch, "edgekit.accelerator" to accelerator, "edgekit.device.tier" to tier)
        }
    }
}

package dev.edgekit.ota

import java.io.File
import java.io.FileNotFoundException
import java.net.HttpURLConnection
import java.net.URL
import java.net.URLEncoder
import java.security.KeyFactory
import java.security.MessageDigest
import java.security.Signature
import java.security.spec.X509EncodedKeySpec
import java.time.Instant

/** Anything TUF verification refuses, or a repository that cannot be read. */
open class TufException(message: String) : Exception(message)

/** The server has no such file (HTTP 404). */
class NotFound(message: String) : TufException(message)

/** Fetches bytes; [maxLength] bounds what is read (an endless-data attack stops there). */
interface Fetcher {
    fun fetch(url: String, maxLength: Long): ByteArray
}

class HttpFetcher(private val timeoutMs: Int = 30_000) : Fetcher {
    override fun fetch(url: String, maxLength: Long): ByteArray {
        val conn = URL(url).openConnection() as HttpURLConnection
        conn.connectTimeout = timeoutMs
        conn.readTimeout = timeoutMs
        try {
            val code = conn.responseCode
            if (code == 404 || code == 403) throw NotFound("$url: HTTP $code")
            if (code != 200) throw TufException("$url: HTTP $code")
            conn.inputStream.use { input ->
                val out = java.io.ByteArrayOutputStream()
                val buffer = ByteArray(65536)
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    out.write(buffer, 0, n)
                    if (out.size() > maxLength) throw TufException("$url is longer than the $maxLength bytes allowed")
                }
                return out.toByteArray()
            }
        } catch (e: FileNotFoundException) {
            throw NotFound("$url: not found")
        } finally {
            conn.disconnect()
        }
    }
}

fun hex(bytes: ByteArray): String = bytes.joinToString("") { String.format("%02x", it) }

fun unhex(text: String): ByteArray {
    if (text.length % 2 != 0) throw TufException("odd-length hex")
    return ByteArray(text.length / 2) { i -> text.substring(2 * i, 2 * i + 2).toInt(16).toByte() }
}

fun digest(algorithm: String, data: ByteArray): String = hex(MessageDigest.getInstance(algorithm).digest(data))

/** A role's keys and threshold (from root, or from a delegation). */
class RoleKeys(val keyids: List<String>, val threshold: Int)

/** Signed metadata: the parsed "signed" object and the signatures over its canonical form. */
class Metadata(val bytes: ByteArray) {
    val json: Map<String, Any?>
    val signed: Map<String, Any?>
    val type: String
    val version: Long
    val expires: Instant

    init {
        json = try {
            Json.parse(bytes).obj("metadata")
        } catch (e: Json.ParseException) {
            throw TufException("metadata is not valid JSON: ${e.message}")
        }
        signed = json.objAt("signed")
        type = signed.str("_type")
        version = signed.long("version")
        if (version < 1) throw TufException("$type version $version is below 1")
        expires = try {
            Instant.parse(signed.str("expires"))
        } catch (e: java.time.format.DateTimeParseException) {
            throw TufException("$type has an unreadable expiry ${signed["expires"]}")
        }
    }

    /** Throws unless [threshold] distinct keys of [role] signed the canonical form of "signed". */
    fun verify(role: RoleKeys, keys: Map<String, Map<String, Any?>>, name: String) {
        val payload = Json.canonical(signed)
        val good = HashSet<String>()
        for (sig in json.list("signatures")) {
            val s = sig.obj("signature")
            val keyid = s.str("keyid")
            if (keyid !in role.keyids || keyid in good) continue
            val key = keys[keyid] ?: continue
            if (verifyOne(key, unhexOrNull(s.str("sig")) ?: continue, payload)) good.add(keyid)
        }
        if (good.size < role.threshold) {
            throw TufException("$name: ${good.size} valid signature(s) of the ${role.threshold} required (threshold not met)")
        }
    }

    private fun unhexOrNull(text: String): ByteArray? = try { unhex(text) } catch (e: Exception) { null }

    companion object {
        private val ED25519_PREFIX = unhex("302a300506032b6570032100")

        /**
         * How ed25519 signatures are checked: (raw 32-byte public key, signature, message) -> valid.
         * The default uses the JDK's provider (Java 15+, Android 13+); an Android app targeting older
         * releases sets a BouncyCastle-based one (see the app module).
         */
        @JvmStatic
        var ed25519: (ByteArray, ByteArray, ByteArray) -> Boolean = { raw, signature, payload ->
            try {
                val public = KeyFactory.getInstance("Ed25519").generatePublic(X509EncodedKeySpec(ED25519_PREFIX + raw))
                val verifier = Signature.getInstance("Ed25519")
                verifier.initVerify(public)
                verifier.update(payload)
                verifier.verify(signature)
            } catch (e: Exception) {
                false
            }
        }

        /** ed25519 only (what edgekit's repository uses); other key types count as no signature. */
        fun verifyOne(key: Map<String, Any?>, signature: ByteArray, payload: ByteArray): Boolean {
            if (key["keytype"] != "ed25519" || key["scheme"] != "ed25519") return false
            val raw = try { unhex(key.objAt("keyval").str("public")) } catch (e: Exception) { return false }
            if (raw.size != 32) return false
            return ed25519(raw, signature, payload)
        }
    }
}

/** A target's length, hashes and custom field, as signed. */
class TargetInfo(val path: String, val length: Long, val hashes: Map<String, String>, val custom: Map<String, Any?>?) {
    fun verify(data: ByteArray) {
        if (data.size.toLong() != length) throw TufException("$path: ${data.size} bytes, the signed length is $length")
        for ((algorithm, expected) in hashes) {
            val name = when (algorithm) {
                "sha256" -> "SHA-256"
                "sha512" -> "SHA-512"
                else -> null
            } ?: continue
            if (digest(name, data) != expected) throw TufException("$path: $algorithm differs from the signed hash")
        }
        if ("sha256" !in hashes && "sha512" !in hashes) throw TufException("$path has no sha256 or sha512 to check")
    }
}

/**
 * The TUF client workflow (specification 1.0, section 5) over one repository: root rotation, then
 * timestamp, snapshot and targets with version, expiry, length and hash checks; delegated targets
 * (path patterns, hash prefixes and succinct hashed bins) for target lookups. Trusted metadata is
 * kept in [metadataDir] under non-versioned names (root.json, timestamp.json, ...).
 */
class TufUpdater(
    private val metadataDir: File,
    metadataUrl: String,
    private val fetcher: Fetcher = HttpFetcher(),
    private val now: () -> Instant = { Instant.now() }
) {
    private val metadataUrl = metadataUrl.trimEnd('/') + "/"
    private var root: Metadata = load("root") ?: throw TufException("no trusted root.json in $metadataDir: run init first")
    private var timestamp: Metadata? = null
    private var snapshot: Metadata? = null
    private val targets = HashMap<String, Metadata>()

    private fun load(name: String): Metadata? {
        val file = File(metadataDir, "$name.json")
        return if (file.isFile) Metadata(file.readBytes()) else null
    }

    private fun persist(name: String, md: Metadata) {
        val file = File(metadataDir, "$name.json")
        val tmp = File(metadataDir, ".$name.json.tmp")
        tmp.writeBytes(md.bytes)
        if (!tmp.renameTo(file)) {
            file.delete()
            if (!tmp.renameTo(file)) throw TufException("cannot write $file")
        }
    }

    private fun rootRole(name: String): RoleKeys {
        val role = root.signed.objAt("roles").objAt(name)
        return RoleKeys(role.list("keyids").map { it as String }, role.long("threshold").toInt())
    }

    @Suppress("UNCHECKED_CAST")
    private fun rootKeys(): Map<String, Map<String, Any?>> = root.signed.objAt("keys") as Map<String, Map<String, Any?>>

    private fun consistent(): Boolean = root.signed["consistent_snapshot"] == true

    private fun checkType(md: Metadata, type: String) {
        if (md.type != type) throw TufException("expected $type metadata, got ${md.type}")
    }

    private fun checkExpiry(md: Metadata, name: String) {
        if (!md.expires.isAfter(now())) throw TufException("$name expired at ${md.expires} (expired metadata)")
    }

    /** Update root, timestamp, snapshot and targets (the top-level workflow). */
    fun refresh() {
        updateRoot()
        updateTimestamp()
        updateSnapshot()
        targets["targets"] = updateTargets("targets", "targets", rootRole("targets"), rootKeys())
    }

    private fun updateRoot() {
        for (i in 0 until 32) {
            val next = root.version + 1
            val bytes = try {
                fetcher.fetch("${metadataUrl}$next.root.json", 512_000)
            } catch (e: NotFound) {
                break
            }
            val md = Metadata(bytes)
            checkType(md, "root")
            md.verify(rootRole("root"), rootKeys(), "root v$next (signed by the trusted root)")
            val newRoot = md
            val role = newRoot.signed.objAt("roles").objAt("root")
            @Suppress("UNCHECKED_CAST")
            newRoot.verify(RoleKeys(role.list("keyids").map { it as String }, role.long("threshold").toInt()),
                newRoot.signed.objAt("keys") as Map<String, Map<String, Any?>>, "root v$next (self-signed)")
            if (newRoot.version != next) throw TufException("root version ${newRoot.version}, expected $next")
            root = newRoot
            persist("root", root)
            // keys may have rotated: trusted timestamp and snapshot are re-checked from scratch
            File(metadataDir, "timestamp.json").delete()
            File(metadataDir, "snapshot.json").delete()
        }
        checkExpiry(root, "root")
    }

    private fun updateTimestamp() {
        val trusted = load("timestamp")
        val md = Metadata(fetcher.fetch("${metadataUrl}timestamp.json", 16_384))
        checkType(md, "timestamp")
        md.verify(rootRole("timestamp"), rootKeys(), "timestamp")
        if (trusted != null) {
            if (md.version < trusted.version) {
                throw TufException("timestamp version ${md.version} is older than the trusted ${trusted.version} (rollback attack)")
            }
            val oldSnap = trusted.signed.objAt("meta").objAt("snapshot.json").long("version")
            if (md.signed.objAt("meta").objAt("snapshot.json").long("version") < oldSnap) {
                throw TufException("timestamp names an older snapshot version than the trusted one (rollback attack)")
            }
        }
        checkExpiry(md, "timestamp")
        timestamp = md
        persist("timestamp", md)
    }

    private fun metaOf(parent: Metadata, name: String): Map<String, Any?> =
        parent.signed.objAt("meta")[name]?.obj(name) ?: throw TufException("${parent.type} does not list $name")

    private fun fetchChecked(name: String, meta: Map<String, Any?>, maxLength: Long): ByteArray {
        val version = meta.long("version")
        val url = if (consistent()) "${metadataUrl}$version.$name" else "${metadataUrl}$name"
        val length = meta["length"] as? Long
        val bytes = fetcher.fetch(url, length ?: maxLength)
        @Suppress("UNCHECKED_CAST")
        val hashes = meta["hashes"] as? Map<String, String>
        if (length != null || hashes != null) TargetInfo(name, length ?: bytes.size.toLong(), hashes ?: emptyMap(), null).let {
            if (hashes.isNullOrEmpty()) { if (bytes.size.toLong() != it.length) throw TufException("$name length mismatch") } else it.verify(bytes)
        }
        return bytes
    }

    private fun updateSnapshot() {
        val meta = metaOf(timestamp!!, "snapshot.json")
        val trusted = load("snapshot")
        val md = Metadata(fetchChecked("snapshot.json", meta, 4_000_000))
        checkType(md, "snapshot")
        md.verify(rootRole("snapshot"), rootKeys(), "snapshot")
        if (md.version != meta.long("version")) throw TufException("snapshot version ${md.version}, timestamp says ${meta.long("version")}")
        if (trusted != null) {
            for ((name, old) in trusted.signed.objAt("meta")) {
                val now = md.signed.objAt("meta")[name]?.obj(name) ?: throw TufException("snapshot dropped $name (rollback attack)")
                if (now.long("version") < old.obj(name).long("version")) throw TufException("$name version went back (rollback attack)")
            }
        }
        checkExpiry(md, "snapshot")
        snapshot = md
        persist("snapshot", md)
    }

    private fun updateTargets(name: String, parentName: String, role: RoleKeys, keys: Map<String, Map<String, Any?>>): Metadata {
        targets[name]?.let { return it }
        val meta = metaOf(snapshot!!, "$name.json")
        val local = load(name)
        val md = if (local != null && local.version == meta.long("version") && tryVerify(local, role, keys)) {
            local
        } else {
            Metadata(fetchChecked("$name.json", meta, 16_000_000)).also {
                checkType(it, "targets")
                it.verify(role, keys, "$name (delegated by $parentName)")
                if (it.version != meta.long("version")) throw TufException("$name version ${it.version}, snapshot says ${meta.long("version")}")
                persist(name, it)
            }
        }
        checkExpiry(md, name)
        return md
    }

    private fun tryVerify(md: Metadata, role: RoleKeys, keys: Map<String, Map<String, Any?>>): Boolean =
        try { md.verify(role, keys, "cached"); true } catch (e: TufException) { false }

    /** The signed info of [path], searching delegations depth-first (null when no role lists it). */
    fun targetInfo(path: String): TargetInfo? {
        if (snapshot == null) refresh()
        val visited = HashSet<String>()
        val stack = ArrayList<String>()
        stack.add("targets")
        while (stack.isNotEmpty() && visited.size < 64) {
            val name = stack.removeAt(stack.size - 1)
            if (!visited.add(name)) continue
            val md = targets[name] ?: continue
            val found = md.signed["targets"]?.obj("targets")?.get(path)
            if (found != null) {
                val t = found.obj(path)
                @Suppress("UNCHECKED_CAST")
                return TargetInfo(path, t.long("length"), t.objAt("hashes") as Map<String, String>, t["custom"] as? Map<String, Any?>)
            }
            val delegations = md.signed["delegations"]?.obj("delegations") ?: continue
            @Suppress("UNCHECKED_CAST")
            val keys = delegations.objAt("keys") as Map<String, Map<String, Any?>>
            val children = ArrayList<String>()
            val succinct = delegations["succinct_roles"]?.obj("succinct_roles")
            if (succinct != null) {
                val bin = succinctRole(succinct, path)
                val role = RoleKeys(succinct.list("keyids").map { it as String }, succinct.long("threshold").toInt())
                targets[bin] = updateTargets(bin, name, role, keys)
                children.add(bin)
            }
            for (r in (delegations["roles"] as? List<*>) ?: emptyList<Any?>()) {
                val role = r.obj("role")
                if (!matches(role, path)) continue
                val child = role.str("name")
                targets[child] = updateTargets(child, name, RoleKeys(role.list("keyids").map { it as String },
                    role.long("threshold").toInt()), keys)
                children.add(child)
                if (role["terminating"] == true) {
                    stack.clear()
                    break
                }
            }
            for (child in children.reversed()) stack.add(child)
        }
        return null
    }

    private fun matches(role: Map<String, Any?>, path: String): Boolean {
        val prefixes = role["path_hash_prefixes"] as? List<*>
        if (prefixes != null) {
            val h = digest("SHA-256", path.toByteArray(Charsets.UTF_8))
            return prefixes.any { h.startsWith(it as String) }
        }
        val patterns = role["paths"] as? List<*> ?: return false
        return patterns.any { globMatch(it as String, path) }
    }

    /** Download [info] to [dest] unless a file with the signed length and hashes is already there. */
    fun download(info: TargetInfo, targetBaseUrl: String, dest: File) {
        if (dest.isFile) {
            try { info.verify(dest.readBytes()); return } catch (e: TufException) { /* replace it */ }
        }
        val base = targetBaseUrl.trimEnd('/') + "/"
        val dir = info.path.substringBeforeLast('/', "")
        val file = info.path.substringAfterLast('/')
        val hash = info.hashes["sha256"] ?: info.hashes.values.first()
        val url = if (consistent()) base + (if (dir == "") "" else "$dir/") + "$hash.$file" else base + info.path
        val data = fetcher.fetch(url, info.length)
        info.verify(data)
        dest.parentFile?.mkdirs()
        val tmp = File(dest.parentFile, ".${dest.name}.tmp")
        tmp.writeBytes(data)
        if (!tmp.renameTo(dest)) { dest.delete(); tmp.renameTo(dest) }
    }

    companion object {
        /** The bin of [path] under TUF succinct hashed bins (TAP 15). */
        fun succinctRole(succinct: Map<String, Any?>, path: String): String {
            val bits = succinct.long("bit_length").toInt()
            val prefix = succinct.str("name_prefix")
            val h = MessageDigest.getInstance("SHA-256").digest(path.toByteArray(Charsets.UTF_8))
            val first = ((h[0].toLong() and 0xff) shl 24) or ((h[1].toLong() and 0xff) shl 16) or
                ((h[2].toLong() and 0xff) shl 8) or (h[3].toLong() and 0xff)
            val bin = first ushr (32 - bits)
            val width = ((bits + 3) / 4)
            return "$prefix-" + java.lang.Long.toHexString(bin).padStart(width, '0')
        }

        /** fnmatch per path segment, as python-tuf matches delegated path patterns. */
        fun globMatch(pattern: String, path: String): Boolean {
            val p = pattern.split("/")
            val t = path.split("/")
            if (p.size != t.size) return false
            return p.indices.all { segmentMatch(p[it], t[it]) }
        }

        private fun segmentMatch(pattern: String, text: String): Boolean {
            val regex = StringBuilder()
            for (c in pattern) {
                when (c) {
                    '*' -> regex.append(".*")
                    '?' -> regex.append('.')
                    else -> regex.append(Regex.escape(c.toString()))
                }
            }
            return Regex(regex.toString()).matches(text)
        }

        /** The file name a target is stored under in a target directory (python-tuf's choice). */
        fun localName(path: String): String = URLEncoder.encode(path, "UTF-8").replace("+", "%20")
    }
}

package dev.edgekit.ota

import java.io.File
import java.io.FileNotFoundException
import java.net.HttpURLConnection
import java.net.URL
import java.security.KeyFactory
import java.security.MessageDigest
import java.security.Signature
import java.security.interfaces.ECPublicKey
import java.security.interfaces.RSAPublicKey
import java.security.spec.MGF1ParameterSpec
import java.security.spec.PSSParameterSpec
import java.security.spec.X509EncodedKeySpec
import java.time.Instant
import java.util.Base64

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

    /**
     * Throws unless [threshold] distinct keys of [role] signed the canonical form of "signed". A keyid
     * may appear once among the signatures, and one public key listed under several keyids counts once.
     */
    fun verify(role: RoleKeys, keys: Map<String, Map<String, Any?>>, name: String) {
        val payload = Json.canonical(signed)
        val seen = HashSet<String>()
        val good = HashSet<String>()
        for (sig in json.list("signatures")) {
            val s = sig.obj("signature")
            val keyid = s.str("keyid")
            if (!seen.add(keyid)) throw TufException("$name: keyid $keyid signs twice (duplicate signatures are refused)")
            if (keyid !in role.keyids) continue
            val key = keys[keyid] ?: continue
            val identity = "${key["keytype"]}:${key["scheme"]}:${(key["keyval"] as? Map<*, *>)?.get("public")}"
            if (identity in good) continue
            if (verifyOne(key, unhexOrNull(s.str("sig")) ?: continue, payload)) good.add(identity)
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
            jca("Ed25519", "Ed25519", X509EncodedKeySpec(ED25519_PREFIX + raw), signature, payload)
        }

        /** ecdsa-sha2-nistp256: (DER SubjectPublicKeyInfo, DER signature, message) -> valid. */
        @JvmStatic
        var ecdsaP256: (ByteArray, ByteArray, ByteArray) -> Boolean = { spki, signature, payload ->
            try {
                val key = KeyFactory.getInstance("EC").generatePublic(X509EncodedKeySpec(spki)) as ECPublicKey
                key.params.curve.field.fieldSize == 256 && jca("EC", "SHA256withECDSA", X509EncodedKeySpec(spki), signature, payload)
            } catch (e: Exception) {
                false
            }
        }

        /**
         * rsassa-pss-sha256 (MGF1 with SHA-256): (DER SubjectPublicKeyInfo, signature, message) -> valid.
         * Signers use a salt as long as the digest (securesystemslib, OpenSSL's default for PSS
         * keys) or the longest the key allows; both are accepted.
         */
        @JvmStatic
        var rsaPssSha256: (ByteArray, ByteArray, ByteArray) -> Boolean = { spki, signature, payload ->
            try {
                val key = KeyFactory.getInstance("RSA").generatePublic(X509EncodedKeySpec(spki)) as RSAPublicKey
                val maxSalt = (key.modulus.bitLength() - 1 + 7) / 8 - 32 - 2
                listOf(32, maxSalt).distinct().any { salt ->
                    try {
                        val verifier = Signature.getInstance("RSASSA-PSS")
                        verifier.setParameter(PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, salt, 1))
                        verifier.initVerify(key)
                        verifier.update(payload)
                        verifier.verify(signature)
                    } catch (e: Exception) {
                        false
                    }
                }
            } catch (e: Exception) {
                false
            }
        }

        private fun jca(keyAlgorithm: String, algorithm: String, spec: X509EncodedKeySpec, signature: ByteArray, payload: ByteArray): Boolean =
            try {
                val verifier = Signature.getInstance(algorithm)
                verifier.initVerify(KeyFactory.getInstance(keyAlgorithm).generatePublic(spec))
                verifier.update(payload)
                verifier.verify(signature)
            } catch (e: Exception) {
                false
            }

        /** The DER bytes of a PEM "PUBLIC KEY" block (how TUF writes ecdsa and rsa public keys). */
        fun pemPublicKey(pem: String): ByteArray? {
            val begin = "-----BEGIN PUBLIC KEY-----"
            val end = "-----END PUBLIC KEY-----"
            val start = pem.indexOf(begin)
            val stop = pem.indexOf(end)
            if (start < 0 || stop < start) return null
            val body = pem.substring(start + begin.length, stop).filter { !it.isWhitespace() }
            return try { Base64.getDecoder().decode(body) } catch (e: IllegalArgumentException) { null }
        }

        /**
         * One signature by [key] (a TUF key object): ed25519, ecdsa-sha2-nistp256 and rsassa-pss-sha256,
         * the schemes the TUF specification names. Any other key type counts as no signature.
         */
        fun verifyOne(key: Map<String, Any?>, signature: ByteArray, payload: ByteArray): Boolean {
            val public = (key["keyval"] as? Map<*, *>)?.get("public") as? String ?: return false
            return when (Pair(key["keytype"], key["scheme"])) {
                Pair("ed25519", "ed25519") -> {
                    val raw = try { unhex(public) } catch (e: Exception) { return false }
                    raw.size == 32 && ed25519(raw, signature, payload)
                }
                Pair("ecdsa", "ecdsa-sha2-nistp256"), Pair("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") ->
                    ecdsaP256(pemPublicKey(public) ?: return false, signature, payload)
                Pair("rsa", "rsassa-pss-sha256") -> rsaPssSha256(pemPublicKey(public) ?: return false, signature, payload)
                else -> false
            }
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
 * (path patterns, hash prefixes and succinct hashed bins) searched in pre-order depth first for
 * target lookups. Trusted metadata is kept in [metadataDir] under non-versioned names (root.json,
 * timestamp.json, ...); role names are percent-encoded in file names and URLs, so a role name
 * cannot reach outside [metadataDir] or change the requested URL.
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

    init {
        // the trusted root must be signed by its own root keys, as any later root is
        checkType(root, "root")
        root.verify(roleOf(root, "root"), keysOf(root), "the trusted root (self-signed)")
    }

    private fun load(name: String): Metadata? {
        val file = File(metadataDir, "${quote(name)}.json")
        return if (file.isFile) try { Metadata(file.readBytes()) } catch (e: TufException) { null } else null
    }

    private fun persist(name: String, md: Metadata) = atomicWrite(File(metadataDir, "${quote(name)}.json"), md.bytes)

    private fun roleOf(md: Metadata, name: String): RoleKeys {
        val role = md.signed.objAt("roles").objAt(name)
        return RoleKeys(role.list("keyids").map { it as String }, role.long("threshold").toInt())
    }

    @Suppress("UNCHECKED_CAST")
    private fun keysOf(md: Metadata): Map<String, Map<String, Any?>> = md.signed.objAt("keys") as Map<String, Map<String, Any?>>

    private fun rootRole(name: String): RoleKeys = roleOf(root, name)

    private fun rootKeys(): Map<String, Map<String, Any?>> = keysOf(root)

    private fun consistent(): Boolean = root.signed["consistent_snapshot"] == true

    private fun checkType(md: Metadata, type: String) {
        if (md.type != type) throw TufException("expected $type metadata, got ${md.type}")
    }

    private fun expired(md: Metadata): Boolean = !md.expires.isAfter(now())

    private fun checkExpiry(md: Metadata, name: String) {
        if (expired(md)) throw TufException("$name expired at ${md.expires} (expired metadata)")
    }

    /** [md] when it is [type] metadata signed by a threshold of [role]'s keys, else null. */
    private fun verified(md: Metadata?, type: String, role: RoleKeys, keys: Map<String, Map<String, Any?>>): Metadata? =
        if (md != null && md.type == type && tryVerify(md, role, keys)) md else null

    /** Update root, timestamp, snapshot and targets (the top-level workflow). */
    fun refresh() {
        updateRoot()
        updateTimestamp()
        updateSnapshot()
        targets.clear()
        targets["targets"] = loadTargets("targets", "root", rootRole("targets"), rootKeys())
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
            md.verify(roleOf(md, "root"), keysOf(md), "root v$next (self-signed)")
            if (md.version != next) throw TufException("root version ${md.version}, expected $next")
            root = md
            persist("root", root)
        }
        checkExpiry(root, "root")
        // The trusted timestamp and snapshot stay the reference for rollback checks across a root
        // update; they stop being trusted only when the new root's keys no longer sign them
        // (rotated keys), which the loads below decide by verifying them again.
    }

    private fun updateTimestamp() {
        val trusted = verified(load("timestamp"), "timestamp", rootRole("timestamp"), rootKeys())
        val md = Metadata(fetcher.fetch("${metadataUrl}timestamp.json", 16_384))
        checkType(md, "timestamp")
        md.verify(rootRole("timestamp"), rootKeys(), "timestamp")
        val snapshotVersion = metaOf(md, "snapshot.json").long("version")
        if (trusted != null) {
            if (md.version < trusted.version) {
                throw TufException("timestamp version ${md.version} is older than the trusted ${trusted.version} (rollback attack)")
            }
            if (md.version == trusted.version) {
                // the same version again: the trusted copy stays, whatever the new bytes say
                checkExpiry(trusted, "timestamp")
                timestamp = trusted
                return
            }
            if (snapshotVersion < metaOf(trusted, "snapshot.json").long("version")) {
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
        val file = "${quote(name)}.json"
        val url = if (consistent()) "${metadataUrl}$version.$file" else "${metadataUrl}$file"
        val length = meta["length"] as? Long
        val bytes = fetcher.fetch(url, length ?: maxLength)
        @Suppress("UNCHECKED_CAST")
        val hashes = meta["hashes"] as? Map<String, String>
        if (length != null && bytes.size.toLong() != length) throw TufException("$name: ${bytes.size} bytes, the signed length is $length")
        if (!hashes.isNullOrEmpty()) TargetInfo(name, bytes.size.toLong(), hashes, null).verify(bytes)
        return bytes
    }

    private fun updateSnapshot() {
        val meta = metaOf(timestamp!!, "snapshot.json")
        val trusted = verified(load("snapshot"), "snapshot", rootRole("snapshot"), rootKeys())
        if (trusted != null && trusted.version == meta.long("version") && !expired(trusted)) {
            snapshot = trusted  // the local copy is the one the timestamp names: nothing to download
            return
        }
        val md = Metadata(fetchChecked("snapshot", meta, 4_000_000))
        checkType(md, "snapshot")
        md.verify(rootRole("snapshot"), rootKeys(), "snapshot")
        if (trusted != null) {
            for ((name, old) in trusted.signed.objAt("meta")) {
                val now = md.signed.objAt("meta")[name]?.obj(name) ?: throw TufException("snapshot dropped $name (rollback attack)")
                if (now.long("version") < old.obj(name).long("version")) throw TufException("$name version went back (rollback attack)")
            }
        }
        if (md.version != meta.long("version")) throw TufException("snapshot version ${md.version}, timestamp says ${meta.long("version")}")
        checkExpiry(md, "snapshot")
        snapshot = md
        persist("snapshot", md)
    }

    /**
     * Targets metadata of role [name] as delegated by [parentName] with [role] and [keys]. A role
     * loaded earlier is verified again against this delegator, so a second path to the same role
     * name cannot borrow the first path's authority.
     */
    private fun loadTargets(name: String, parentName: String, role: RoleKeys, keys: Map<String, Map<String, Any?>>): Metadata {
        val what = "$name (delegated by $parentName)"
        targets[name]?.let {
            it.verify(role, keys, what)
            return it
        }
        val meta = metaOf(snapshot!!, "$name.json")
        val local = verified(load(name), "targets", role, keys)
        val md = if (local != null && local.version == meta.long("version")) {
            local
        } else {
            Metadata(fetchChecked(name, meta, 16_000_000)).also {
                checkType(it, "targets")
                it.verify(role, keys, what)
                if (it.version != meta.long("version")) throw TufException("$name version ${it.version}, snapshot says ${meta.long("version")}")
            }
        }
        checkExpiry(md, name)
        if (md !== local) persist(name, md)
        targets[name] = md
        return md
    }

    private fun tryVerify(md: Metadata, role: RoleKeys, keys: Map<String, Map<String, Any?>>): Boolean =
        try { md.verify(role, keys, "cached"); true } catch (e: TufException) { false }

    /** A role still to visit in the delegation search: its name, its delegator, and the keys it needs. */
    private class Visit(val name: String, val parent: String, val role: RoleKeys, val keys: Map<String, Map<String, Any?>>)

    /**
     * The signed info of [path] (null when no role lists it), searching the delegation graph in
     * pre-order depth first as the specification (5.6.7) says: a role's metadata is downloaded only
     * when the search reaches it, and a terminating delegation that matches ends the search below it.
     */
    fun targetInfo(path: String): TargetInfo? {
        if (snapshot == null) refresh()
        val visited = HashSet<Pair<String, String>>()
        val stack = ArrayList<Visit>()
        stack.add(Visit("targets", "root", rootRole("targets"), rootKeys()))
        var budget = MAX_DELEGATIONS
        while (stack.isNotEmpty() && budget > 0) {
            val visit = stack.removeAt(stack.size - 1)
            if (!visited.add(Pair(visit.name, visit.parent))) continue
            budget -= 1
            val md = loadTargets(visit.name, visit.parent, visit.role, visit.keys)
            val found = md.signed["targets"]?.obj("targets")?.get(path)
            if (found != null) {
                val t = found.obj(path)
                @Suppress("UNCHECKED_CAST")
                return TargetInfo(path, t.long("length"), t.objAt("hashes") as Map<String, String>, t["custom"] as? Map<String, Any?>)
            }
            val delegations = md.signed["delegations"]?.obj("delegations") ?: continue
            @Suppress("UNCHECKED_CAST")
            val keys = delegations.objAt("keys") as Map<String, Map<String, Any?>>
            val children = ArrayList<Visit>()
            val succinct = delegations["succinct_roles"]?.obj("succinct_roles")
            if (succinct != null) {
                val role = RoleKeys(succinct.list("keyids").map { it as String }, succinct.long("threshold").toInt())
                children.add(Visit(succinctRole(succinct, path), visit.name, role, keys))
            }
            for (r in (delegations["roles"] as? List<*>) ?: emptyList<Any?>()) {
                val role = r.obj("role")
                if (!matches(role, path)) continue
                children.add(Visit(role.str("name"), visit.name, RoleKeys(role.list("keyids").map { it as String },
                    role.long("threshold").toInt()), keys))
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

        /** How many delegated roles one target lookup may visit (python-tuf's default). */
        const val MAX_DELEGATIONS = 32

        /**
         * [text] percent-encoded except for unreserved characters (RFC 3986: letters, digits and
         * "-._~"), as Python's urllib.parse.quote(text, safe=""): role names in URLs and file names.
         */
        fun quote(text: String): String {
            val out = StringBuilder()
            for (b in text.toByteArray(Charsets.UTF_8)) {
                val c = (b.toInt() and 0xff)
                if ((c in 'a'.toInt()..'z'.toInt()) || (c in 'A'.toInt()..'Z'.toInt()) || (c in '0'.toInt()..'9'.toInt()) ||
                    c == '-'.toInt() || c == '.'.toInt() || c == '_'.toInt() || c == '~'.toInt()) {
                    out.append(c.toChar())
                } else {
                    out.append('%').append(String.format("%02X", c))
                }
            }
            return out.toString()
        }

        /** The file name a target is stored under in a target directory (python-tuf's choice). */
        fun localName(path: String): String = quote(path)
    }
}

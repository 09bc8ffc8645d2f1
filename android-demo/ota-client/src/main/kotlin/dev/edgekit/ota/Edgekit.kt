package dev.edgekit.ota

import java.io.File
import java.io.RandomAccessFile
import java.math.BigInteger
import java.net.HttpURLConnection
import java.net.URL
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.security.MessageDigest

/** edgekit's rollout rule: the same bucket as edgekit.ota.contract.bucket in Python, bit for bit. */
object Rollouts {
    const val BUCKETS = 10_000

    fun bucket(deviceId: String, seed: String): Int {
        val h = MessageDigest.getInstance("SHA-256").digest("$seed:$deviceId".toByteArray(Charsets.UTF_8))
        return BigInteger(1, h.copyOfRange(0, 8)).mod(BigInteger.valueOf(BUCKETS.toLong())).toInt()
    }
}

class Rollout(val basisPoints: Int, val seed: String, val halted: Boolean) {
    fun includes(deviceId: String): Boolean = !halted && Rollouts.bucket(deviceId, seed) < basisPoints

    companion object {
        fun parse(data: Map<String, Any?>): Rollout {
            val points = data["basis_points"] as? Long ?: throw TufException("rollout basis_points is not an integer")
            if (points < 0 || points > Rollouts.BUCKETS) throw TufException("rollout basis_points $points is outside 0..10000")
            return Rollout(points.toInt(), data.str("seed"), data["halted"] == true)
        }
    }
}

class ReleaseRef(val release: Long, val version: String)

/** The signed state of a channel: the custom field of MODEL/CHANNEL/channel.json. */
class ChannelState(
    val model: String, val channel: String, val current: ReleaseRef, val rollout: Rollout,
    val stable: ReleaseRef?, val rollbackOf: Long?, val files: Map<String, List<String>>
) {
    fun releaseFor(deviceId: String): ReleaseRef? = if (rollout.includes(deviceId)) current else stable

    companion object {
        const val DESCRIPTOR_VERSION = 1L

        fun parse(custom: Map<String, Any?>?): ChannelState {
            val c = custom ?: throw TufException("the channel target has no edgekit descriptor")
            if (c["edgekit"] != DESCRIPTOR_VERSION) throw TufException("descriptor version ${c["edgekit"]}, this client reads $DESCRIPTOR_VERSION")
            val cur = c.objAt("current")
            val st = c["stable"]?.obj("stable")
            @Suppress("UNCHECKED_CAST")
            val files = (c["files"] as? Map<String, Any?> ?: emptyMap()).mapValues { (it.value as List<*>).map { f -> f as String } }
            return ChannelState(c.str("model"), c.str("channel"), ReleaseRef(cur.long("release"), cur.str("version")),
                Rollout.parse(c.objAt("rollout")), st?.let { ReleaseRef(it.long("release"), it.str("version")) },
                c["rollback_of"] as? Long, files)
        }
    }
}

/** The custom field of a release file's target (edgekit.ota.contract.descriptor in Python). */
class Descriptor(
    val model: String, val channel: String, val version: String, val release: Long, val file: String, val kind: String,
    val size: Long, val rollout: Rollout, val rollbackOf: Long?, val target: String?, val format: String?,
    val precision: String?, val runtime: String?
) {
    companion object {
        fun parse(custom: Map<String, Any?>?): Descriptor {
            val c = custom ?: throw TufException("the target has no edgekit descriptor")
            if (c["edgekit"] != ChannelState.DESCRIPTOR_VERSION) throw TufException("descriptor version ${c["edgekit"]}")
            return Descriptor(c.str("model"), c.str("channel"), c.str("version"), c.long("release"), c.str("file"),
                c.str("kind"), c.long("size"), Rollout.parse(c.objAt("rollout")), c["rollback_of"] as? Long,
                c["target"] as? String, c["format"] as? String, c["precision"] as? String, c["runtime"] as? String)
        }
    }
}

private val NAME = Regex("^[a-z0-9][a-z0-9._-]{0,63}$")

fun checkName(value: String, what: String): String {
    if (!NAME.matches(value) || ".." in value) throw IllegalArgumentException("$what \"$value\" is not allowed")
    return value
}

/**
 * Keeps one model on a device up to date: TUF refresh, the rollout decision, resumable downloads
 * (HTTP Range), install into a new slot, a caller-supplied smoke test, an atomic switch of
 * state.json, the previous slot kept, outcome reports (an outbox, retried).
 */
class ModelUpdater(
    serverUrl: String,
    private val cacheDir: File,
    private val deviceId: String,
    trustedRoot: ByteArray,
    /** The operator's enrolment token: the device enrols its id once and keeps its own token for reports. */
    private val enrolmentToken: String? = null
) {
    private val server = serverUrl.trimEnd('/')
    private val metadataDir = File(cacheDir, "tuf")

    init {
        metadataDir.mkdirs()
        File(cacheDir, "downloads").mkdirs()
        if (!File(metadataDir, "root.json").isFile) File(metadataDir, "root.json").writeBytes(trustedRoot)
    }

    class State(var channel: String?, var active: Long?, var activeVersion: String?, var previous: Long?,
                var highest: Long, val failed: MutableSet<Long>, var installedDownloads: List<String> = emptyList())

    class Result(val status: String, val release: Long?, val version: String?, val detail: String, val slot: File?)

    private fun stateFile(model: String) = File(cacheDir, "models/${checkName(model, "model")}/state.json")

    fun state(model: String): State {
        val file = stateFile(model)
        if (!file.isFile) return State(null, null, null, null, 0, HashSet())
        val j = Json.parse(file.readBytes()).obj("state")
        return State(j["channel"] as? String, j["active"] as? Long, j["active_version"] as? String, j["previous"] as? Long,
            j["highest"] as? Long ?: 0, (j["failed"] as? List<*> ?: emptyList<Any?>()).map { it as Long }.toMutableSet(),
            (j["installed_downloads"] as? List<*> ?: emptyList<Any?>()).mapNotNull { it as? String })
    }

    private fun save(model: String, s: State) {
        val data = Json.write(linkedMapOf("channel" to s.channel, "active" to s.active, "active_version" to s.activeVersion,
            "previous" to s.previous, "highest" to s.highest, "failed" to s.failed.sorted(),
            "installed_downloads" to s.installedDownloads))
        atomicWrite(stateFile(model), data.toByteArray())
    }

    fun slot(model: String, release: Long) = File(cacheDir, "models/$model/slots/$release")

    /** Update [model] from [channel]. [chooseFile] picks the artifact file from the manifest's file
     *  names; [smokeTest] returns null when the installed slot loads and runs, else why not. */
    fun update(model: String, channel: String, chooseFile: (List<String>) -> String, smokeTest: (File) -> String?): Result {
        checkName(model, "model")
        checkName(channel, "channel")
        flushReports()
        dropInstalledDownloads(model)
        val tuf = TufUpdater(metadataDir, "$server/metadata/")
        tuf.refresh()
        val info = tuf.targetInfo("$model/$channel/channel.json") ?: return Result("up_to_date", null, null, "no such channel", null)
        val state = ChannelState.parse(info.custom)
        if (state.model != model || state.channel != channel) throw TufException("the signed state is for ${state.model}/${state.channel}")
        val local = state(model)
        val ref = state.releaseFor(deviceId) ?: return Result("up_to_date", local.active, local.activeVersion, "", null)
        if (ref.release == local.active || ref.release in local.failed) return Result("up_to_date", local.active, local.activeVersion, "", null)
        if (local.channel == channel && ref.release < local.highest) {
            if (state.current.release < local.highest) {
                throw TufException("$model/$channel offers release ${state.current.release}, older than release ${local.highest} installed here")
            }
            return Result("up_to_date", local.active, local.activeVersion, "", null)
        }
        val names = state.files[ref.release.toString()] ?: throw TufException("no files listed for release ${ref.release}")
        // Delta targets (NAME.from-N.delta, edgekit.ota.delta) are for clients that rebuild files; this one downloads whole files.
        val wanted = listOf("bundle.json", "reference.npz",
            chooseFile(names.filter { it != "bundle.json" && it != "reference.npz" && !it.endsWith(".delta") }))
        val parts = LinkedHashMap<String, File>()
        for (name in wanted.filter { it in names }) {
            val t = tuf.targetInfo("$model/$channel/${ref.release}/$name") ?: throw TufException("$name has no signed target")
            parts[name] = downloadResumable(t)
        }
        val slots = File(cacheDir, "models/$model/slots").apply { mkdirs() }
        val staging = Files.createTempDirectory(slots.toPath(), ".tmp-${ref.release}-").toFile()
        for ((name, part) in parts) Files.copy(part.toPath(), File(staging, name).toPath())
        val slot = slot(model, ref.release)
        if (slot.exists()) slot.deleteRecursively()
        Files.move(staging.toPath(), slot.toPath(), StandardCopyOption.ATOMIC_MOVE)
        val failure = smokeTest(slot)
        val s = state(model)
        if (failure != null) {
            s.failed.add(ref.release)
            save(model, s)
            slot.deleteRecursively()
            report(model, channel, ref.release, "failed", failure)
            return Result("failed", ref.release, ref.version, failure, null)
        }
        if (s.active != null && s.active != ref.release) s.previous = s.active
        s.channel = channel
        s.active = ref.release
        s.activeVersion = ref.version
        s.highest = maxOf(s.highest, ref.release)
        s.installedDownloads = parts.values.map { it.name }.sorted()
        save(model, s)
        for (old in slots.listFiles() ?: emptyArray()) {
            if (old.name != s.active.toString() && old.name != s.previous.toString()) old.deleteRecursively()
        }
        dropInstalledDownloads(model)
        report(model, channel, ref.release, "installed", "")
        return Result("installed", ref.release, ref.version, "", slot)
    }

    /** Remove the downloads the active slot was installed from, also after a crash between the switch and their removal. */
    private fun dropInstalledDownloads(model: String) {
        for (name in state(model).installedDownloads) {
            if ('/' !in name && name.endsWith(".part")) File(cacheDir, "downloads/$name").delete()
        }
    }

    /** The verified file of [t], resuming a partial download with HTTP Range. */
    fun downloadResumable(t: TargetInfo): File {
        val sha = t.hashes["sha256"] ?: throw TufException("${t.path} has no sha256")
        val part = File(cacheDir, "downloads/$sha.part")
        var have = if (part.isFile) part.length() else 0L
        if (have > t.length) { part.delete(); have = 0 }
        if (have < t.length) {
            val dir = t.path.substringBeforeLast('/')
            val conn = URL("$server/targets/$dir/$sha.${t.path.substringAfterLast('/')}").openConnection() as HttpURLConnection
            if (have > 0) conn.setRequestProperty("Range", "bytes=$have-")
            val code = conn.responseCode
            if (code != 200 && code != 206) throw TufException("${t.path}: HTTP $code")
            RandomAccessFile(part, "rw").use { out ->
                if (code == 200) { out.setLength(0); have = 0 }
                out.seek(have)
                conn.inputStream.use { input ->
                    val buffer = ByteArray(65536)
                    while (true) {
                        val n = input.read(buffer)
                        if (n < 0) break
                        out.write(buffer, 0, n)
                        have += n
                        if (have > t.length) break
                    }
                }
                out.fd.sync()
            }
        }
        if (part.length() < t.length) throw TufException("${t.path}: cut off at ${part.length()} of ${t.length} bytes; resumes next time")
        try {
            t.verify(part.readBytes())
        } catch (e: TufException) {
            part.delete()
            throw e
        }
        return part
    }

    private fun report(model: String, channel: String, release: Long, outcome: String, detail: String) {
        val line = Json.write(linkedMapOf("device_id" to deviceId, "model" to model, "channel" to channel,
            "release" to release, "outcome" to outcome, "detail" to detail.take(500)))
        File(cacheDir, "outbox.jsonl").appendText(line + "\n")
        flushReports()
    }

    /** Queue a telemetry batch ([Telemetry.batch]) in the outbox, as a line `{"telemetry": BATCH}`; it goes
     *  to /v1/telemetry with the next [flushReports]. The batch must be this device's ([deviceId]). */
    fun queueTelemetry(batch: Map<String, Any?>) {
        File(cacheDir, "outbox.jsonl").appendText(Json.write(linkedMapOf("telemetry" to batch)) + "\n")
    }

    /** This device's token from its enrolment (device.json), enrolling now when there is none; null if it cannot yet. */
    private fun deviceToken(): String? {
        val file = File(cacheDir, "device.json")
        if (file.isFile) {
            val saved = try { Json.parse(file.readBytes()).obj("device") } catch (e: Exception) { null }
            if (saved != null && saved["device_id"] == deviceId && saved["server"] == server) return saved["device_token"] as? String
        }
        val enrolment = enrolmentToken ?: return null
        return try {
            val conn = URL("$server/v1/devices/enrol").openConnection() as HttpURLConnection
            conn.requestMethod = "POST"
            conn.doOutput = true
            conn.setRequestProperty("Content-Type", "application/json")
            conn.outputStream.use { it.write(Json.write(linkedMapOf("device_id" to deviceId, "enrolment_token" to enrolment)).toByteArray()) }
            if (conn.responseCode != 201) return null
            val token = conn.inputStream.use { Json.parse(it.readBytes()).obj("enrolment").str("device_token") }
            atomicWrite(file, Json.write(linkedMapOf("server" to server, "device_id" to deviceId, "device_token" to token)).toByteArray())
            file.setReadable(false, false)
            file.setReadable(true, true)
            token
        } catch (e: java.io.IOException) {
            null
        }
    }

    /** Send queued reports and telemetry batches with this device's token; keep those the server cannot take now
     *  (at most 1000, oldest dropped); drop those it refuses for good. How many were sent. */
    fun flushReports(): Int {
        val outbox = File(cacheDir, "outbox.jsonl")
        if (!outbox.isFile) return 0
        val pending = outbox.readLines().filter { it.isNotBlank() }.takeLast(1000)
        var sent = 0
        val left = ArrayList<String>()
        val token = if (pending.isEmpty()) null else deviceToken()
        for ((i, line) in pending.withIndex()) {
            if (token == null) {
                left.addAll(pending.subList(i, pending.size))
                break
            }
            try {
                val telemetry = line.startsWith("{\"telemetry\":")
                val body = if (telemetry) Json.write(Json.parse(line).obj("outbox line")["telemetry"]) else line
                val conn = URL("$server/v1/" + (if (telemetry) "telemetry" else "reports")).openConnection() as HttpURLConnection
                conn.requestMethod = "POST"
                conn.doOutput = true
                conn.setRequestProperty("Content-Type", "application/json")
                conn.setRequestProperty("Authorization", "Bearer $token")
                conn.outputStream.use { it.write(body.toByteArray()) }
                val code = conn.responseCode
                if (code == 401) {  // the service no longer knows this token: enrol again next time
                    File(cacheDir, "device.json").delete()
                    left.addAll(pending.subList(i, pending.size))
                    break
                }
                if (code >= 500 || code == 429) left.add(line) else if (code < 300) sent++  // other 4xx: refused for good, dropped
            } catch (e: java.io.IOException) {
                left.add(line)
            }
        }
        atomicWrite(outbox, left.joinToString("") { "$it\n" }.toByteArray())
        return sent
    }
}

fun atomicWrite(file: File, data: ByteArray) {
    file.parentFile?.mkdirs()
    val tmp = File(file.parentFile, ".${file.name}.tmp")
    RandomAccessFile(tmp, "rw").use { it.setLength(0); it.write(data); it.fd.sync() }
    Files.move(tmp.toPath(), file.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
}

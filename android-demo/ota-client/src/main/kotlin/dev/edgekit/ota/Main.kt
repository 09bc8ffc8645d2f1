@file:JvmName("Main")

package dev.edgekit.ota

import java.io.File
import kotlin.system.exitProcess

/**
 * The command line generic TUF client test suites drive:
 *
 *   CLIENT --metadata-dir DIR init TRUSTED_ROOT_FILE
 *   CLIENT --metadata-dir DIR --metadata-url URL refresh
 *   CLIENT --metadata-dir DIR --metadata-url URL --target-name PATH [--target-name PATH ...]
 *          --target-base-url URL --target-dir DIR download
 *
 * and, to drive the device side against edgekit serve:
 *
 *   CLIENT --server URL --cache-dir DIR --device-id ID --trusted-root FILE [--enrolment-token T] telemetry RUNS.json
 *
 * which records RUNS.json's points ({"resource": {...}, "points": [{model, channel, release, artifact,
 * provider, passed_over, durations_ns, errors, load_seconds}]}, the inputs of tests/data/telemetry-vectors.json)
 * into ModelStats as an app would, queues the batch in the outbox and flushes it; it prints how many
 * outbox entries were sent and fails when any is still waiting.
 *
 * Exit 0 on success, 1 on any failure (the reason goes to stderr).
 */
fun main(args: Array<String>) {
    exitProcess(run(args))
}

fun run(args: Array<String>): Int {
    var metadataDir: String? = null
    var metadataUrl: String? = null
    var targetBaseUrl: String? = null
    var targetDir: String? = null
    val targetNames = ArrayList<String>()
    val positional = ArrayList<String>()
    val device = HashMap<String, String>()
    var i = 0
    fun value(name: String): String {
        if (i + 1 >= args.size) throw IllegalArgumentException("$name needs a value")
        i += 1
        return args[i]
    }
    try {
        while (i < args.size) {
            when (val a = args[i]) {
                "--metadata-dir" -> metadataDir = value(a)
                "--metadata-url" -> metadataUrl = value(a)
                "--target-name" -> targetNames.add(value(a))
                "--target-base-url" -> targetBaseUrl = value(a)
                "--target-dir" -> targetDir = value(a)
                "--server", "--cache-dir", "--device-id", "--trusted-root", "--enrolment-token" -> device[a] = value(a)
                else -> positional.add(a)
            }
            i += 1
        }
        if (positional.firstOrNull() == "telemetry") return sendTelemetry(device, positional.getOrNull(1))
        val dir = File(metadataDir ?: throw IllegalArgumentException("--metadata-dir is required"))
        when (positional.firstOrNull()) {
            "init" -> {
                val root = File(positional.getOrNull(1) ?: throw IllegalArgumentException("init needs TRUSTED_ROOT_FILE"))
                val md = Metadata(root.readBytes())
                if (md.type != "root") throw TufException("$root is not root metadata")
                dir.mkdirs()
                atomicWrite(File(dir, "root.json"), md.bytes)
            }
            "refresh" -> TufUpdater(dir, metadataUrl ?: throw IllegalArgumentException("--metadata-url is required")).refresh()
            "download" -> {
                val updater = TufUpdater(dir, metadataUrl ?: throw IllegalArgumentException("--metadata-url is required"))
                updater.refresh()
                val base = targetBaseUrl ?: throw IllegalArgumentException("--target-base-url is required")
                val out = File(targetDir ?: throw IllegalArgumentException("--target-dir is required"))
                if (targetNames.isEmpty()) throw IllegalArgumentException("give at least one --target-name")
                for (name in targetNames) {
                    val info = updater.targetInfo(name) ?: throw TufException("no signed target $name")
                    updater.download(info, base, File(out, TufUpdater.localName(name)))
                }
            }
            else -> throw IllegalArgumentException("usage: --metadata-dir DIR (init ROOT | --metadata-url URL refresh | " +
                "--metadata-url URL --target-name PATH... --target-base-url URL --target-dir DIR download)")
        }
        return 0
    } catch (e: Exception) {
        System.err.println("error: ${e.javaClass.simpleName}: ${e.message}")
        return 1
    }
}

private fun sendTelemetry(flags: Map<String, String>, runsFile: String?): Int {
    fun flag(name: String) = flags[name] ?: throw IllegalArgumentException("telemetry needs $name")
    val runs = Json.parse(File(runsFile ?: throw IllegalArgumentException("telemetry needs RUNS.json")).readBytes()).obj("runs")
    val deviceId = flag("--device-id")
    val updater = ModelUpdater(flag("--server"), File(flag("--cache-dir")), deviceId, File(flag("--trusted-root")).readBytes(),
        flags["--enrolment-token"])
    @Suppress("UNCHECKED_CAST")
    val telemetry = Telemetry(deviceId, runs.objAt("resource") as Map<String, String>)
    for (p in runs.list("points").map { it.obj("point") }) {
        val stats = ModelStats(p.str("model"), p.str("channel"), p.long("release"), p.str("artifact"), p.str("provider"),
            p["passed_over"] as? String ?: "", p["load_seconds"] as? Double)
        for (ns in p.list("durations_ns")) stats.recordRun(ns as Long)
        for ((kind, n) in p.objAt("errors")) repeat((n as Long).toInt()) { stats.recordError(kind) }
        telemetry.track(stats)
    }
    updater.queueTelemetry(telemetry.batch() ?: throw IllegalArgumentException("RUNS.json records nothing"))
    val sent = updater.flushReports()
    println(sent)
    val left = File(flag("--cache-dir"), "outbox.jsonl").readLines().count { it.isNotBlank() }
    if (left > 0) System.err.println("error: $left outbox entries still wait")
    return if (left > 0) 1 else 0
}

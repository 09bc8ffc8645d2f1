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
                else -> positional.add(a)
            }
            i += 1
        }
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

package dev.edgekit.demo

import android.os.Bundle
import android.widget.Button
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import java.util.concurrent.Executors

/** The model's version and channel, and the update state: check, download, verify, install, switch. */
class UpdateActivity : AppCompatActivity() {
    private val worker = Executors.newSingleThreadExecutor()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_update)
        findViewById<Button>(R.id.check).setOnClickListener { check() }
        show("")
    }

    private fun show(status: String) {
        val updater = Updates.get(this)
        val state = updater.state(BuildConfig.OTA_MODEL)
        findViewById<TextView>(R.id.info).text = getString(
            R.string.update_info, BuildConfig.OTA_MODEL, state.channel ?: BuildConfig.OTA_CHANNEL,
            state.active?.toString() ?: "none", state.activeVersion ?: "-", state.previous?.toString() ?: "-",
            Updates.deviceId(this), BuildConfig.OTA_SERVER)
        findViewById<TextView>(R.id.status).text = status
    }

    private fun check() {
        findViewById<TextView>(R.id.status).text = getString(R.string.checking)
        worker.execute {
            val status = try {
                val r = Updates.get(this).update(BuildConfig.OTA_MODEL, BuildConfig.OTA_CHANNEL, Bundles::chooseFile, Updates::smokeTest)
                when (r.status) {
                    "installed" -> "installed release ${r.release} (${r.version}); it passed its smoke test"
                    "failed" -> "release ${r.release} failed here and was not activated: ${r.detail}"
                    else -> "up to date"
                }
            } catch (e: Exception) {
                "update refused or failed (the active model is unchanged): ${e.message}"
            }
            runOnUiThread { show(status) }
        }
    }

    override fun onDestroy() {
        super.onDestroy()
        worker.shutdown()
    }
}

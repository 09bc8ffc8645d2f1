package dev.edgekit.demo

import android.content.Intent
import android.os.Bundle
import android.widget.Button
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import java.util.concurrent.Executors
import kotlin.math.exp

/** Draw a digit; the installed bundle's artifact classifies it on LiteRT (GPU or XNNPACK) or ONNX Runtime. */
class MainActivity : AppCompatActivity() {
    private val worker = Executors.newSingleThreadExecutor()
    private var classifier: Classifier? = null
    private var model: InstalledModel? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val pad = findViewById<DrawView>(R.id.pad)
        pad.onStroke = { classify(pad) }
        findViewById<Button>(R.id.clear).setOnClickListener {
            pad.clear()
            findViewById<TextView>(R.id.result).text = getString(R.string.draw_a_digit)
        }
        findViewById<Button>(R.id.updates).setOnClickListener { startActivity(Intent(this, UpdateActivity::class.java)) }
    }

    override fun onResume() {
        super.onResume()
        worker.execute {  // the active slot may have changed while the update screen was open
            val installed = try { Updates.active(this) } catch (e: Exception) { null }
            if (installed?.slot != model?.slot) {
                classifier?.close()
                classifier = installed?.let { Classifier.open(it) }
                model = installed
            }
            runOnUiThread {
                findViewById<TextView>(R.id.model).text = installed?.let {
                    "model ${it.version}: ${it.target} (${it.format}) on ${classifier?.provider}"
                } ?: getString(R.string.no_model)
            }
        }
    }

    private fun classify(pad: DrawView) {
        val m = model ?: return
        val c = classifier ?: return
        val spec = m.inputs[0]
        val nchw = if (spec.sourceTranspose == listOf(0, 2, 3, 1)) listOf(1, spec.shape[3], spec.shape[1], spec.shape[2])
            else spec.shape
        val input = pad.toNchw(nchw[1], nchw[2], nchw[3]) ?: return
        worker.execute {
            val started = System.nanoTime()
            val logits = c.classify(input)
            val ms = (System.nanoTime() - started) / 1e6
            val max = logits.maxOrNull() ?: return@execute
            val e = logits.map { exp((it - max).toDouble()) }
            val best = e.indices.maxByOrNull { e[it] } ?: return@execute
            val p = e[best] / e.sum()
            runOnUiThread {
                findViewById<TextView>(R.id.result).text = getString(R.string.prediction, best, p * 100, ms)
            }
        }
    }

    override fun onDestroy() {
        super.onDestroy()
        worker.execute { classifier?.close() }
        worker.shutdown()
    }
}

package dev.edgekit.demo

import android.content.Context
import android.os.Build
import dev.edgekit.ota.Metadata
import dev.edgekit.ota.ModelUpdater
import org.bouncycastle.crypto.params.Ed25519PublicKeyParameters
import org.bouncycastle.crypto.signers.Ed25519Signer
import java.io.File

/** The app's one ModelUpdater: the OTA service from BuildConfig, the trusted root shipped in assets. */
object Updates {
    @Volatile private var updater: ModelUpdater? = null

    fun get(context: Context): ModelUpdater {
        updater?.let { return it }
        if (Build.VERSION.SDK_INT < 33) {  // no ed25519 in the platform's JCA before Android 13
            Metadata.ed25519 = { raw, signature, message ->
                val verifier = Ed25519Signer()
                verifier.init(false, Ed25519PublicKeyParameters(raw, 0))
                verifier.update(message, 0, message.size)
                verifier.verifySignature(signature)
            }
        }
        val root = context.assets.open("root.json").use { it.readBytes() }
        val deviceId = deviceId(context)
        return ModelUpdater(BuildConfig.OTA_SERVER, File(context.filesDir, "ota"), deviceId, root,
            BuildConfig.OTA_ENROLMENT_TOKEN.ifEmpty { null }).also { updater = it }
    }

    /** A random id made once per install (it decides this device's rollout buckets). */
    fun deviceId(context: Context): String {
        val file = File(context.filesDir, "device-id")
        if (!file.isFile) file.writeText("android-" + java.util.UUID.randomUUID().toString())
        return file.readText().trim()
    }

    /** The smoke test before a new slot becomes active: it loads on this device and runs once. */
    fun smokeTest(slot: File): String? = try {
        val model = Bundles.open(slot)
        Classifier.open(model).use { classifier ->
            val input = model.inputs[0]
            val n = input.shape.drop(1).fold(1) { a, b -> a * b }
            val out = classifier.classify(FloatArray(n))
            if (out.isEmpty() || out.any { it.isNaN() }) "the model ran but gave no usable output" else null
        }
    } catch (e: Exception) {
        "the new model failed to load or run: ${e.message}"
    }

    fun active(context: Context): InstalledModel? {
        val u = get(context)
        val state = u.state(BuildConfig.OTA_MODEL)
        val release = state.active ?: return null
        return Bundles.open(u.slot(BuildConfig.OTA_MODEL, release))
    }
}

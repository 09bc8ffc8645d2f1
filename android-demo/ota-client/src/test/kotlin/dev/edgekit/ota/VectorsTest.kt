package dev.edgekit.ota

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/** The Python side computed these (tests/kotlin_vectors.py); both clients must agree bit for bit. */
class VectorsTest {
    private val vectors = Json.parse(File("vectors.json").readBytes()).obj("vectors")

    @Test
    fun rolloutBucketsMatchPython() {
        for (v in vectors.list("buckets")) {
            val o = v.obj("bucket")
            assertEquals(o.long("bucket").toInt(), Rollouts.bucket(o.str("device"), o.str("seed")))
        }
    }

    @Test
    fun canonicalJsonMatchesSecuresystemslib() {
        for (v in vectors.list("canonical")) {
            val o = v.obj("sample")
            assertEquals(o.str("canonical"), String(Json.canonical(o["value"]), Charsets.UTF_8))
        }
    }

    @Test
    fun channelStateAndRolloutDecisionsMatchPython() {
        val channel = vectors.objAt("channel")
        val state = ChannelState.parse(channel.objAt("custom"))
        assertEquals(3L, state.current.release)
        assertEquals("1.0.0", state.stable!!.version)
        for ((device, release) in channel.objAt("release_for")) {
            assertEquals(release, state.releaseFor(device)?.release)
        }
    }

    @Test
    fun descriptorsParseAsPythonWroteThem() {
        val parsed = vectors.list("descriptors").map { Descriptor.parse(it.obj("descriptor")) }
        assertEquals("tflite-int8", parsed[0].target)
        assertEquals("int8", parsed[0].precision)
        assertEquals("ai-edge-litert", parsed[0].runtime)
        assertEquals(2500, parsed[0].rollout.basisPoints)
        assertEquals(3L, parsed[1].rollbackOf)
        assertTrue(parsed[1].rollout.halted)
        assertEquals(null, parsed[1].target)
        assertFalse(parsed[1].rollout.includes("device-0"))  // halted: nobody
    }

    @Test
    fun succinctBinsMatchPythonTuf() {
        for (v in vectors.list("succinct")) {
            val o = v.obj("bin")
            val succinct = mapOf<String, Any?>("bit_length" to o.long("bit_length"), "name_prefix" to "bins")
            assertEquals(o.str("role"), TufUpdater.succinctRole(succinct, o.str("path")))
        }
    }

    @Test
    fun ed25519SignatureOverCanonicalJsonVerifies() {
        val md = Metadata(Json.write(vectors.objAt("signed_root")).toByteArray())
        val role = md.signed.objAt("roles").objAt("root")
        @Suppress("UNCHECKED_CAST")
        val keys = md.signed.objAt("keys") as Map<String, Map<String, Any?>>
        md.verify(RoleKeys(role.list("keyids").map { it as String }, 1), keys, "root")
        val tampered = Metadata(Json.write(vectors.objAt("signed_root")).replace("\"version\":1", "\"version\":2").toByteArray())
        try {
            tampered.verify(RoleKeys(role.list("keyids").map { it as String }, 1), keys, "root")
            assertTrue("a tampered root verified", false)
        } catch (e: TufException) {
            assertFalse(e.message!! == "")
        }
    }
}

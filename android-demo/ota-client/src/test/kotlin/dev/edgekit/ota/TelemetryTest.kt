package dev.edgekit.ota

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Test
import java.io.File

/** tests/data/telemetry-vectors.json: what the Python device computes (tests/telemetry_vectors.py); the
 *  browser library gives the same answers (tests/test_telemetry_vectors.py). Compared value for value. */
class TelemetryTest {
    private val vectors = Json.parse(File("../../../../../tests/data/telemetry-vectors.json").readBytes()).obj("vectors")
    private val hv = vectors.objAt("histogram")

    private fun histogram(durations: List<Any?>) = LatencyHistogram().also { h -> durations.forEach { h.add(it as Long) } }

    /** Written and read back, as the service receives it. */
    private fun wire(value: Any?): Any? = Json.parse(Json.write(value))

    @Test
    fun histogramBucketsEdgesAndFormsMatchPython() {
        val durations = hv.list("durations_ns")
        assertEquals(hv.list("buckets"), durations.map { LatencyHistogram.bucket(it as Long).toLong() })
        for ((index, upper) in hv.objAt("uppers")) assertEquals(upper, LatencyHistogram.upper(index.toInt()))
        val whole = histogram(durations)
        assertEquals(hv["explicit"], wire(whole.toExplicit()))
        val earlier = histogram(durations.take(hv.long("since_first").toInt()))
        assertEquals(hv["since"], wire(whole.since(earlier).toExplicit()))
        assertEquals(hv["empty"], wire(LatencyHistogram().toExplicit()))
        for ((q, ms) in hv.objAt("percentiles_ms")) assertEquals(ms as Double, whole.percentile(q.toDouble()), 0.0)
    }

    @Test
    fun batchesMatchPythonFieldForField() {
        for (v in vectors.list("batches")) {
            val input = v.obj("vector").objAt("input")
            val points = input.list("points").map { it.obj("point") }.map { p ->
                @Suppress("UNCHECKED_CAST")
                val errors = (p.objAt("errors") as Map<String, Long>)
                TelemetryPoint(p.str("model"), p.str("channel"), p.long("release"), p.str("artifact"), p.str("provider"),
                    p.str("passed_over"), histogram(p.list("durations_ns")), errors, p["load_seconds"] as? Double)
            }
            @Suppress("UNCHECKED_CAST")
            val batch = Telemetry.makeBatch(input.str("device_id"), input.objAt("resource") as Map<String, String>, points,
                input.str("start_ns").toLong(), input.str("end_ns").toLong())
            assertEquals(v.obj("vector")["batch"], wire(batch))
        }
    }

    private fun metrics(batch: Map<String, Any?>?): Map<String, Map<String, Any?>> {
        val scope = batch!!.list("resourceMetrics")[0].obj("resource").list("scopeMetrics")[0].obj("scope")
        return scope.list("metrics").map { it.obj("metric") }.associateBy { it.str("name") }
    }

    @Test
    fun modelStatsSendEachRunOnceAndTheLoadTimeFirst() {
        val stats = ModelStats("digits", "stable", 3, "tflite-int8", "litert", loadSeconds = 0.25)
        val telemetry = Telemetry("device-1", Telemetry.deviceClass("none", "low"))
        telemetry.track(stats)
        for (ns in listOf(1_000_000L, 2_000_000L, 3_000_000L)) stats.recordRun(ns)
        stats.recordError("InferenceError")
        val first = metrics(telemetry.batch())
        assertEquals("3", first.getValue("edgekit.inference.duration").objAt("histogram").list("dataPoints")[0].obj("p")["count"])
        assertEquals("1", first.getValue("edgekit.inference.errors").objAt("sum").list("dataPoints")[0].obj("p")["asInt"])
        assertEquals(0.25, first.getValue("edgekit.model.load.duration").objAt("gauge").list("dataPoints")[0].obj("p")["asDouble"])
        assertNull(telemetry.batch())  // nothing new: no batch
        stats.recordRun(5_000_000L)
        val second = metrics(telemetry.batch())
        assertEquals(setOf("edgekit.inference.duration"), second.keys)  // the load time and the error went once
        assertEquals("1", second.getValue("edgekit.inference.duration").objAt("histogram").list("dataPoints")[0].obj("p")["count"])
    }
}

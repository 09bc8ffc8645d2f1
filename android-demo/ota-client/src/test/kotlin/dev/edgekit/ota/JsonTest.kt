package dev.edgekit.ota

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class JsonTest {
    @Test
    fun parsesAndWritesCanonicalJson() {
        val value = Json.parse("""{ "b": [1, -2, true, null], "a": "x\"\\y\u00fc", "c": {"z": 1, "y": 2} }""")
        assertEquals("""{"a":"x\"\\yü","b":[1,-2,true,null],"c":{"y":2,"z":1}}""", String(Json.canonical(value), Charsets.UTF_8))
    }

    @Test
    fun refusesFloatsInCanonicalJsonAndBadInput() {
        try {
            Json.canonical(Json.parse("""{"a": 1.5}"""))
            fail("a float was encoded")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message!!.contains("no floats"))
        }
        for (bad in listOf("{", """{"a" 1}""", """{"a":1,"a":2}""", "[1,]", "tru", """"open""")) {
            try {
                Json.parse(bad)
                fail("parsed $bad")
            } catch (e: Json.ParseException) {
                // refused
            }
        }
    }

    @Test
    fun globAndLocalNames() {
        assertTrue(TufUpdater.globMatch("models/*/x.bin", "models/a/x.bin"))
        assertTrue(!TufUpdater.globMatch("models/*", "models/a/x.bin"))
        assertEquals("a%2Fb%20c", TufUpdater.localName("a/b c"))
    }

    @Test
    fun roleNamesStayInsideTheMetadataDirectory() {
        // as Python's urllib.parse.quote(name, safe=""): no "/" survives, so no name climbs out
        assertEquals("%2F..%2Fescaped-role", TufUpdater.quote("/../escaped-role"))
        assertEquals("%3F", TufUpdater.quote("?"))
        assertEquals("%23", TufUpdater.quote("#"))
        assertEquals("r%C3%B4le_1-a.b~c", TufUpdater.quote("r\u00f4le_1-a.b~c"))
    }
}

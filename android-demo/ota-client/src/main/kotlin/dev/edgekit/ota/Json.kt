package dev.edgekit.ota

/**
 * A small JSON reader and the canonical JSON writer TUF signs (securesystemslib's encode_canonical:
 * keys sorted by code point, no whitespace, only '\' and '"' escaped, integers only).
 *
 * Values: Map<String, Any?> (insertion ordered), List<Any?>, String, Long, Double, Boolean, null.
 */
object Json {
    class ParseException(message: String) : Exception(message)

    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipSpace()
        if (reader.pos != text.length) throw ParseException("unexpected data at offset ${reader.pos}")
        return value
    }

    fun parse(bytes: ByteArray): Any? = parse(String(bytes, Charsets.UTF_8))

    /** Canonical JSON bytes of [value]; floats are refused, as TUF does. */
    fun canonical(value: Any?): ByteArray = StringBuilder().also { writeCanonical(it, value) }.toString().toByteArray(Charsets.UTF_8)

    private fun writeCanonical(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is Boolean -> out.append(if (value) "true" else "false")
            is Long, is Int -> out.append(value.toString())
            is Double -> throw IllegalArgumentException("canonical JSON has no floats ($value)")
            is String -> {
                out.append('"')
                for (c in value) {
                    if (c == '"' || c == '\\') out.append('\\')
                    out.append(c)
                }
                out.append('"')
            }
            is Map<*, *> -> {
                out.append('{')
                val keys = value.keys.map { it as String }.sorted()
                keys.forEachIndexed { i, key ->
                    if (i > 0) out.append(',')
                    writeCanonical(out, key)
                    out.append(':')
                    writeCanonical(out, value[key])
                }
                out.append('}')
            }
            is List<*> -> {
                out.append('[')
                value.forEachIndexed { i, item ->
                    if (i > 0) out.append(',')
                    writeCanonical(out, item)
                }
                out.append(']')
            }
            else -> throw IllegalArgumentException("cannot encode ${value.javaClass.name} as JSON")
        }
    }

    /** Compact (not canonical) JSON, for reports and state files. */
    fun write(value: Any?): String = StringBuilder().also { writePlain(it, value) }.toString()

    private fun writePlain(out: StringBuilder, value: Any?) {
        when (value) {
            is String -> {
                out.append('"')
                for (c in value) {
                    when {
                        c == '"' -> out.append("\\\"")
                        c == '\\' -> out.append("\\\\")
                        c == '\n' -> out.append("\\n")
                        c < ' ' -> out.append(String.format("\\u%04x", c.toInt()))
                        else -> out.append(c)
                    }
                }
                out.append('"')
            }
            is Map<*, *> -> {
                out.append('{')
                var first = true
                for ((k, v) in value) {
                    if (!first) out.append(',')
                    first = false
                    writePlain(out, k as String)
                    out.append(':')
                    writePlain(out, v)
                }
                out.append('}')
            }
            is List<*> -> {
                out.append('[')
                value.forEachIndexed { i, item ->
                    if (i > 0) out.append(',')
                    writePlain(out, item)
                }
                out.append(']')
            }
            is Double -> out.append(value.toString())
            else -> writeCanonical(out, value)
        }
    }

    private class Reader(val text: String) {
        var pos = 0

        fun skipSpace() {
            while (pos < text.length && text[pos] in " \t\r\n") pos++
        }

        fun value(): Any? {
            skipSpace()
            if (pos >= text.length) throw ParseException("unexpected end of JSON")
            return when (val c = text[pos]) {
                '{' -> obj()
                '[' -> array()
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) number() else throw ParseException("unexpected '$c' at offset $pos")
            }
        }

        private fun literal(word: String, value: Any?): Any? {
            if (!text.startsWith(word, pos)) throw ParseException("bad literal at offset $pos")
            pos += word.length
            return value
        }

        private fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipSpace()
            if (peek() == '}') { pos++; return out }
            while (true) {
                skipSpace()
                if (peek() != '"') throw ParseException("expected a key at offset $pos")
                val key = string()
                skipSpace()
                expect(':')
                if (out.containsKey(key)) throw ParseException("duplicate key \"$key\"")
                out[key] = value()
                skipSpace()
                val c = next()
                if (c == '}') return out
                if (c != ',') throw ParseException("expected ',' or '}' at offset ${pos - 1}")
            }
        }

        private fun array(): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipSpace()
            if (peek() == ']') { pos++; return out }
            while (true) {
                out.add(value())
                skipSpace()
                val c = next()
                if (c == ']') return out
                if (c != ',') throw ParseException("expected ',' or ']' at offset ${pos - 1}")
            }
        }

        private fun string(): String {
            expect('"')
            val out = StringBuilder()
            while (true) {
                if (pos >= text.length) throw ParseException("unterminated string")
                val c = text[pos++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> {
                        val e = next()
                        when (e) {
                            '"', '\\', '/' -> out.append(e)
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000c')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (pos + 4 > text.length) throw ParseException("bad \\u escape")
                                out.append(text.substring(pos, pos + 4).toInt(16).toChar())
                                pos += 4
                            }
                            else -> throw ParseException("bad escape \\$e")
                        }
                    }
                    else -> out.append(c)
                }
            }
        }

        private fun number(): Any {
            val start = pos
            if (peek() == '-') pos++
            while (pos < text.length && text[pos].isDigit()) pos++
            var isFloat = false
            if (pos < text.length && text[pos] == '.') { isFloat = true; pos++; while (pos < text.length && text[pos].isDigit()) pos++ }
            if (pos < text.length && (text[pos] == 'e' || text[pos] == 'E')) {
                isFloat = true
                pos++
                if (pos < text.length && (text[pos] == '+' || text[pos] == '-')) pos++
                while (pos < text.length && text[pos].isDigit()) pos++
            }
            val literal = text.substring(start, pos)
            return if (isFloat) literal.toDouble() else literal.toLongOrNull() ?: throw ParseException("number out of range: $literal")
        }

        private fun peek(): Char = if (pos < text.length) text[pos] else '\u0000'
        private fun next(): Char = if (pos < text.length) text[pos++] else throw ParseException("unexpected end of JSON")
        private fun expect(c: Char) {
            if (next() != c) throw ParseException("expected '$c' at offset ${pos - 1}")
        }
    }
}

/** Typed access to parsed JSON objects, with a clear error naming what is missing. */
@Suppress("UNCHECKED_CAST")
fun Any?.obj(what: String): Map<String, Any?> = this as? Map<String, Any?> ?: throw TufException("$what is not a JSON object")

fun Map<String, Any?>.str(key: String): String = this[key] as? String ?: throw TufException("missing string \"$key\"")
fun Map<String, Any?>.long(key: String): Long = this[key] as? Long ?: throw TufException("missing integer \"$key\"")
fun Map<String, Any?>.objAt(key: String): Map<String, Any?> = this[key].obj("\"$key\"")

@Suppress("UNCHECKED_CAST")
fun Map<String, Any?>.list(key: String): List<Any?> = this[key] as? List<Any?> ?: throw TufException("missing list \"$key\"")

package dev.edgekit.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.graphics.Rect
import android.util.AttributeSet
import android.view.MotionEvent
import android.view.View

/** A square black pad: draw white strokes with a finger or stylus; [onStroke] fires as the drawing changes. */
class DrawView(context: Context, attrs: AttributeSet?) : View(context, attrs) {
    private var bitmap: Bitmap? = null
    private var canvas: Canvas? = null
    private var lastX = 0f
    private var lastY = 0f
    private val paint = Paint().apply {
        color = Color.WHITE
        isAntiAlias = true
        strokeWidth = 48f
        strokeCap = Paint.Cap.ROUND
        style = Paint.Style.STROKE
    }
    var onStroke: (() -> Unit)? = null

    override fun onMeasure(widthMeasureSpec: Int, heightMeasureSpec: Int) {
        val size = MeasureSpec.getSize(widthMeasureSpec)
        setMeasuredDimension(size, size)
    }

    override fun onSizeChanged(w: Int, h: Int, oldw: Int, oldh: Int) {
        bitmap = Bitmap.createBitmap(w, h, Bitmap.Config.ARGB_8888).also { canvas = Canvas(it).apply { drawColor(Color.BLACK) } }
        paint.strokeWidth = w / 12f
    }

    override fun onDraw(c: Canvas) {
        bitmap?.let { c.drawBitmap(it, 0f, 0f, null) }
    }

    override fun onTouchEvent(e: MotionEvent): Boolean {
        when (e.actionMasked) {
            MotionEvent.ACTION_DOWN -> {
                lastX = e.x; lastY = e.y
                canvas?.drawPoint(e.x, e.y, paint)
            }
            MotionEvent.ACTION_MOVE -> {
                canvas?.drawLine(lastX, lastY, e.x, e.y, paint)
                lastX = e.x; lastY = e.y
            }
            MotionEvent.ACTION_UP -> performClick()
        }
        invalidate()
        onStroke?.invoke()
        return true
    }

    override fun performClick(): Boolean = super.performClick()

    fun clear() {
        canvas?.drawColor(Color.BLACK)
        invalidate()
    }

    /**
     * The drawing as the model's input, as the digits data was made: the ink's bounding box scaled
     * into a (4h x 4w) frame, averaged over 4x4 blocks, values 0..1, ink high. Null when empty.
     */
    fun toNchw(channels: Int, h: Int, w: Int): FloatArray? {
        val bmp = bitmap ?: return null
        val pixels = IntArray(bmp.width * bmp.height).also { bmp.getPixels(it, 0, bmp.width, 0, 0, bmp.width, bmp.height) }
        var x0 = bmp.width; var y0 = bmp.height; var x1 = -1; var y1 = -1
        for (y in 0 until bmp.height) for (x in 0 until bmp.width) {
            if (Color.red(pixels[y * bmp.width + x]) > 40) {
                if (x < x0) x0 = x
                if (y < y0) y0 = y
                if (x > x1) x1 = x
                if (y > y1) y1 = y
            }
        }
        if (x1 < 0) return null
        val side = maxOf(x1 - x0, y1 - y0) + 1
        val cx = (x0 + x1) / 2
        val cy = (y0 + y1) / 2
        val big = Bitmap.createBitmap(4 * w, 4 * h, Bitmap.Config.ARGB_8888)
        Canvas(big).apply {
            drawColor(Color.BLACK)
            drawBitmap(bmp, Rect(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), Rect(0, 0, 4 * w, 4 * h),
                Paint(Paint.FILTER_BITMAP_FLAG))
        }
        val out = FloatArray(channels * h * w)
        for (y in 0 until h) for (x in 0 until w) {
            var sum = 0
            for (dy in 0 until 4) for (dx in 0 until 4) sum += Color.red(big.getPixel(4 * x + dx, 4 * y + dy))
            val v = sum / (16f * 255f)
            for (c in 0 until channels) out[c * h * w + y * w + x] = v
        }
        return out
    }
}

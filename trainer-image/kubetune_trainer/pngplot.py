"""A loss-curve PNG without plotting libraries: stdlib zlib + struct, a 3x5 pixel font for labels.

`loss_curve_png(train, evals)` draws training loss (blue line) and evaluation loss (orange dots)
against the optimizer step, with the axis ranges written at the ends of the axes.
"""

from __future__ import annotations

import math
import struct
import zlib

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 36
WHITE, BLACK, GREY = (255, 255, 255), (40, 40, 40), (225, 225, 225)
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)

# 3x5 glyphs, rows top to bottom, 3 bits each (4 = left pixel).
FONT = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 2, 2), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "+": (0, 2, 7, 2, 0), " ": (0, 0, 0, 0, 0), "e": (0, 7, 7, 4, 7),
    "a": (0, 6, 3, 5, 7), "i": (2, 0, 2, 2, 2), "l": (6, 2, 2, 2, 7), "n": (0, 6, 5, 5, 5), "o": (0, 7, 5, 5, 7),
    "p": (0, 7, 5, 7, 4), "r": (0, 6, 4, 4, 4), "s": (0, 7, 6, 3, 7), "t": (2, 7, 2, 2, 3), "v": (0, 5, 5, 5, 2),
}


class Canvas:
    def __init__(self, width: int, height: int, background=WHITE):
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(background) * width) for _ in range(height)]

    def dot(self, x: int, y: int, color, size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    self.rows[py][3 * px:3 * px + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color, size: int = 1) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), color, size)

    def text(self, x: int, y: int, text: str, color=BLACK, scale: int = 2) -> None:
        for char in text.lower():
            for row, bits in enumerate(FONT.get(char, FONT[" "])):
                for col in range(3):
                    if bits & (4 >> col):
                        self.dot(x + col * scale, y + row * scale, color, scale)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.3g}"


def loss_curve_png(train: list[tuple[int, float]], evals: list[tuple[int, float]] | None = None) -> bytes:
    """PNG bytes of the loss curve. Points are (step, loss); non-finite losses are skipped."""
    train = [(s, v) for s, v in train if math.isfinite(v)]
    evals = [(s, v) for s, v in (evals or []) if math.isfinite(v)]
    canvas = Canvas(WIDTH, HEIGHT)
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    points = train + evals
    max_step = max((s for s, _ in points), default=1) or 1
    min_step = min((s for s, _ in points), default=0)
    top = max((v for _, v in points), default=1.0) or 1.0
    span_x = max(max_step - min_step, 1)

    def to_xy(step: int, value: float) -> tuple[int, int]:
        return (round(x0 + (step - min_step) / span_x * (x1 - x0)), round(y1 - max(value, 0) / top * (y1 - y0)))

    for i in range(1, 5):  # grid
        canvas.line(x0, y1 - i * (y1 - y0) // 4, x1, y1 - i * (y1 - y0) // 4, GREY)
    canvas.line(x0, y0, x0, y1, BLACK, 2)
    canvas.line(x0, y1, x1, y1, BLACK, 2)
    canvas.text(4, y0 - 4, _label(top))
    canvas.text(4, y1 - 8, "0")
    canvas.text(x0, y1 + 8, str(min_step))
    canvas.text(x1 - 4 * 2 * len(str(max_step)), y1 + 8, str(max_step))
    canvas.text(x0 + (x1 - x0) // 2 - 16, y1 + 20, "step")
    canvas.text(4, 6, "loss")
    canvas.dot(x1 - 150, 8, BLUE, 8)
    canvas.text(x1 - 136, 8, "train")
    canvas.dot(x1 - 70, 8, ORANGE, 8)
    canvas.text(x1 - 56, 8, "eval")
    for (sa, va), (sb, vb) in zip(train, train[1:]):
        canvas.line(*to_xy(sa, va), *to_xy(sb, vb), BLUE, 2)
    for step, value in train[:1]:
        canvas.dot(*to_xy(step, value), BLUE, 2)
    for step, value in evals:
        x, y = to_xy(step, value)
        canvas.dot(x - 3, y - 3, ORANGE, 7)
    return canvas.png()

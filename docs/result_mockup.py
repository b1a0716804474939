"""Draws docs/result.png: what a /dream result looks like in Discord, for the README.

A drawing of the layout the bot posts (embed, four images, the buttons under them), not a
screenshot: `python docs/result_mockup.py` redraws it.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (49, 51, 56)
EMBED = (43, 45, 49)
ACCENT = (88, 101, 242)
TEXT = (219, 222, 225)
MUTED = (148, 155, 164)
BUTTON = (78, 80, 88)
DANGER = (218, 55, 60)
WIDTH, HEIGHT = 760, 700


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def picture(size: int, hue: float) -> Image.Image:
    """A stand-in for a generated image: a lighthouse-ish gradient, different per image."""
    image = Image.new("RGB", (size, size))
    pixels = image.load()
    assert pixels is not None
    for y in range(size):
        for x in range(size):
            sky = y / size
            wave = 0.5 + 0.5 * math.sin((x / size) * 6.0 + hue * 3.0)
            r = int(40 + 120 * sky * (0.6 + 0.4 * math.sin(hue)))
            g = int(60 + 90 * sky * wave)
            b = int(120 + 100 * (1 - sky))
            pixels[x, y] = (r, g, b)
    draw = ImageDraw.Draw(image)
    tower = size // 2 + int((hue - 1.5) * 10)
    draw.rectangle((tower - 6, size // 3, tower + 6, size - 20), fill=(230, 230, 220))
    draw.polygon(
        [(tower - 14, size // 3), (tower + 14, size // 3), (tower, size // 3 - 16)],
        fill=(200, 60, 50),
    )
    draw.rectangle((0, size - 20, size, size), fill=(30, 50, 70))
    return image


def button(draw: ImageDraw.ImageDraw, x: int, y: int, label: str, colour=BUTTON) -> int:
    width = int(draw.textlength(label, font=font(15))) + 24
    draw.rounded_rectangle((x, y, x + width, y + 32), radius=4, fill=colour)
    draw.text((x + 12, y + 8), label, fill=(255, 255, 255), font=font(15))
    return x + width + 8


def main() -> None:
    canvas = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((20, 20, 60, 60), fill=ACCENT)
    draw.text((74, 20), "sdbot", fill=(255, 255, 255), font=font(17))
    draw.text((130, 22), "APP", fill=MUTED, font=font(12))
    draw.text((74, 44), "@alice", fill=(201, 205, 251), font=font(15))
    draw.rounded_rectangle((74, 72, 740, 236), radius=6, fill=EMBED)
    draw.rectangle((74, 72, 78, 236), fill=ACCENT)
    draw.text((92, 84), "Dream for alice", fill=TEXT, font=font(14))
    prompt = "a lighthouse in a storm, (dramatic lighting:1.2)"
    draw.text((92, 106), prompt, fill=TEXT, font=font(15))
    fields = [
        ("Negative", "blurry, text"),
        ("Seeds", "1234, 1235, 1236, 1237"),
        ("Steps", "30"),
        ("Sampler", "DPM++ 2M Karras"),
        ("CFG", "6.5"),
        ("Size", "512x512"),
    ]
    for index, (name, value) in enumerate(fields):
        x = 92 + (index % 3) * 215
        y = 134 + (index // 3) * 38
        draw.text((x, y), name, fill=TEXT, font=font(13))
        draw.text((x, y + 16), value, fill=MUTED, font=font(13))
    draw.text((92, 214), "job 42 · cost 4 credits · balance 46", fill=MUTED, font=font(12))
    side = 150
    for index in range(4):
        x = 74 + index * (side + 8)
        canvas.paste(picture(side, 0.8 * index + 0.5), (x, 248))
    rows = [
        ["U1", "U2", "U3", "U4"],
        ["V1", "V2", "V3", "V4"],
        ["V1 strong", "V2 strong", "V3 strong", "V4 strong"],
    ]
    y = 414
    for row in rows:
        x = 74
        for label in row:
            x = button(draw, x, y, label)
        y += 42
    x = 74
    for label in ("Reroll", "Info", "Edit"):
        x = button(draw, x, y, label)
    button(draw, x, y, "Delete", DANGER)
    draw.text(
        (74, y + 56),
        "Every button carries only ids (sd:upscale:42:0); each press is a new, charged job,\n"
        "posted as a reply to this message. They keep working after a restart.",
        fill=MUTED,
        font=font(14),
    )
    draw.text(
        (74, y + 104),
        "Reactions do the same: reroll, delete, send me this by DM.",
        fill=TEXT,
        font=font(14),
    )
    canvas.save(Path(__file__).with_name("result.png"), optimize=True)


if __name__ == "__main__":
    main()

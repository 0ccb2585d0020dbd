#!/usr/bin/python3
"""Resizes images with PIL's BILINEAR for pil_resize_test: python3 pil_resize.py IN OUT W H ..."""
import sys

from PIL import Image

args = sys.argv[1:]
for i in range(0, len(args), 4):
    source, target, width, height = args[i:i + 4]
    with Image.open(source) as image:
        image.load()
        image.resize((int(width), int(height)), Image.BILINEAR).save(target)

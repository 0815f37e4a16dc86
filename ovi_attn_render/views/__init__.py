"""The pictures: GIF/MP4/PNG/SVG views over the reader."""

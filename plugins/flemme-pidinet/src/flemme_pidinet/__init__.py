"""flemme-pidinet: PiDiNet (pixel difference networks) as a flemme encoder family."""

"""Entry point of flemme-pidinet: a name and a lazy factory only (no torch import)."""

from flemme_core.hookspecs import hookimpl


@hookimpl
def register_encoders(register) -> None:
    register("pidinet", "flemme_pidinet.encoder:encoder",
             "PiDiNet edge network (pixel-difference convs cd/ad/rd/cv, carv4, CDCM + CSAM side outputs); "
             "loads the official checkpoints; features: stages | side | concat (MMFD); 2D only",
             example={"variant": "tiny", "dil": 4}, dims=[2])

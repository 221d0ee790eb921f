"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.compression", {
    "quantize": "optreg.quantize",
    "compression_report": "optreg.compression_report",
    "CompressionReport": "optreg.CompressionReport",
    "Quantized": "optreg.Quantized",
})

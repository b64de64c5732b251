"""Cryptographic primitives every layer may use; they import no layer and no app code."""

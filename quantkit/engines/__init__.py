"""Serving engines are processes behind HTTP: profiles (data), lifecycle, an OpenAI-compatible
client. quantkit never imports an engine."""

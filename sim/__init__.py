"""Offline simulator, WeChat model and fake WeChat server."""

"""Pure WeChat wire codecs: XML pushes, replies, signatures, AES safe mode."""

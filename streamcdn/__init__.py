"""streamcdn: a video CDN with adaptive-bitrate streaming, shaped like Netflix Open Connect."""

__version__ = "0.1.0"

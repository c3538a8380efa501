"""Media pipeline: the ffmpeg binary, probing, sample titles, ladders and the HLS transcode."""

"""Media: decoding videos, frame folders and GIFs into upright RGB frames, and the frame transforms of the recipe."""
from src.media.transforms import (JPEG_QUALITY, RESIZE_FILTERS, STORAGE_DTYPES, center_crop, decode_array, encode_array,
                                  finite_frames, jpeg_round_trip, resize_exact, resize_short_side, to_model_range)
from src.media.video import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, FrameStream, VideoError, VideoInfo, frame_files,
                             is_frame_folder, is_hidden, is_image_file, is_video_file, natural_key, probe, read_frames)

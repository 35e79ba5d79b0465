"""Decoding real clips, frame folders and GIFs; resampling by timestamps; rotation; transforms."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from src.media.transforms import center_crop, resize_short_side, to_model_range
from src.media.video import FrameStream, VideoError, is_frame_folder, is_video_file, natural_key, probe, read_frames


def _raw_frames(path, orientation_auto: int) -> np.ndarray:
    """Every frame straight from OpenCV (BGR), independent of src.video."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, orientation_auto)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames)


def test_arm_wrestling_28fps_resampled_to_25(shared):
    frames, info = read_frames(shared / "videos" / "arm_wrestling.mp4", fps=25)
    assert frames.shape == (250, 256, 340, 3) and frames.dtype == np.uint8
    assert info.fps == pytest.approx(28.0) and info.frame_count == 280
    assert info.duration == pytest.approx(10.0) and info.warnings == []


def test_resampling_picks_frames_by_time(shared):
    path = shared / "videos" / "arm_wrestling.mp4"
    native, _ = read_frames(path, fps=None)
    assert native.shape[0] == 280
    rgb = cv2.cvtColor(_raw_frames(path, 1)[0], cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(native[0], rgb)
    resampled, _ = read_frames(path, fps=25)
    # FFmpeg fps filter (round=near): output k shows the last source frame i whose time rounds to at
    # most k output periods, i * 25 / 28 < k + 0.5, i.e. i = ((2k + 1) * 28 - 1) // 50.
    expected = [((2 * k + 1) * 28 - 1) // 50 for k in range(250)]
    assert expected[:6] == [0, 1, 2, 3, 5, 6] and expected[-1] == 279  # source frame 4 (0.143 s) is dropped
    np.testing.assert_array_equal(resampled, native[expected])


def test_cleaning_pool_30fps_gives_250(shared):
    frames, info = read_frames(shared / "videos" / "cleaning_pool.mp4", fps=25)
    assert frames.shape[0] == 250 and info.fps == pytest.approx(30.0)


def test_rotation_metadata_gives_upright_frames(shared):
    path = shared / "videos" / "video_90.mov"
    frames, info = read_frames(path, fps=None)
    assert frames.shape == (3, 568, 320, 3)  # 320 wide, 568 high
    assert info.rotation == 90 and (info.width, info.height) == (320, 568)
    stored = _raw_frames(path, 0)  # as stored: 568 wide, 320 high
    assert stored.shape[1:3] == (320, 568)
    # 90 degrees of display rotation means turning the stored picture clockwise.
    upright = np.rot90(stored[0][..., ::-1], k=-1)
    np.testing.assert_array_equal(frames[0], upright)
    unrotated, info0 = read_frames(shared / "videos" / "video_0.mov", fps=None)
    assert unrotated.shape == (3, 320, 568, 3) and info0.rotation == 0
    assert probe(path).width == 320 and probe(path).height == 568


def test_b_frame_clip_in_presentation_order(shared):
    frames, info = read_frames(shared / "videos" / "unordered.mov", fps=None)
    assert frames.shape == (4, 50, 50, 3)
    # 4 frames at 32 fps timed 0, 1/32, 2/32, 3/32 s: any decode-order timestamp would have been
    # retimed with a warning, and the duration would differ.
    assert info.duration == pytest.approx(4 / 32) and info.warnings == []


def test_corrupted_file_warns_naming_lost_frames(shared):
    path = shared / "videos" / "corrupted.mp4"
    frames, info = read_frames(path, fps=25)
    assert info.frame_count == 28
    assert frames.shape[0] == 70  # 2.8 s decoded at 25 fps
    assert len(info.warnings) == 1
    assert "corrupted.mp4" in info.warnings[0] and "28 of the 50" in info.warnings[0]


@pytest.mark.parametrize("name", ["arm_wrestling.mp4", "video_90.mov", "corrupted.mp4"])
def test_frames_skipped_unconverted_leave_the_others_as_reading_every_frame(shared, name):
    """FrameStream.frames decodes a frame it is not asked for without converting it (grab, no retrieve): the frames
    it converts are those OpenCV's read() of every frame gives, and the count and warnings do not change."""
    path = shared / "videos" / name
    every = _raw_frames(path, 1)  # read() of every frame, upright, BGR
    asked = []
    stream = FrameStream(path, fps=None)
    got = list(stream.frames(lambda i: asked.append(i) or i % 7 in (0, 3)))
    assert asked == list(range(len(every))) and len(got) == len(every)  # each frame asked once, in order
    for i, frame in enumerate(got):
        if i % 7 in (0, 3):
            np.testing.assert_array_equal(frame, cv2.cvtColor(every[i], cv2.COLOR_BGR2RGB))
        else:
            assert frame is None
    whole = FrameStream(path, fps=None)
    assert sum(1 for _ in whole) == len(every)
    assert (stream.info.frame_count, stream.info.warnings) == (whole.info.frame_count, whole.info.warnings)
    assert (stream.info.width, stream.info.height) == (every.shape[2], every.shape[1])


@pytest.mark.parametrize("name", ["arm_wrestling.mp4", "corrupted.mp4"])
def test_a_process_limited_to_one_opencv_thread_decodes_with_one_the_same_frames(shared, name):
    path = shared / "videos" / name
    every = _raw_frames(path, 1)  # FFmpeg's own thread count
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as a decoding worker (src.jobs.set_threads)
    try:
        frames, info = read_frames(path, fps=None)
    finally:
        cv2.setNumThreads(threads)
    np.testing.assert_array_equal(frames, every[..., ::-1])
    assert info.frame_count == len(every)


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_unreadable_file_raises_one_line_error(tmp_path, content):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoError) as err:
        read_frames(bad)
    message = str(err.value)
    assert "broken.mp4" in message and "\n" not in message


def test_missing_path_raises(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        read_frames(tmp_path / "nope.mp4")


def _write_folder(folder, frames, names):
    folder.mkdir()
    for frame, name in zip(frames, names):
        assert cv2.imwrite(str(folder / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def test_frame_folder_natural_order_mixed_formats(shared, tmp_path):
    source, _ = read_frames(shared / "videos" / "arm_wrestling.mp4", fps=None)
    source = source[:12:, ::4, ::4]  # 12 small frames, all different
    names = [f"pic{i + 1}.{'png' if i % 2 else 'bmp'}" for i in range(12)]
    folder = tmp_path / "Series1"
    _write_folder(folder, source, names)
    (folder / ".DS_Store").write_bytes(b"\0\1")
    (folder / "notes.txt").write_text("not a frame")
    assert is_frame_folder(folder) and not is_video_file(folder)
    frames, info = read_frames(folder)
    assert info.frame_count == 12
    np.testing.assert_array_equal(frames, source)  # pic2 before pic10, lossless formats


def test_frame_folder_declared_rate_is_resampled(shared, tmp_path):
    source, _ = read_frames(shared / "videos" / "arm_wrestling.mp4", fps=None)
    source = source[:10, ::8, ::8]
    _write_folder(tmp_path / "seq", source, [f"f{i}.png" for i in range(10)])
    taken_as_is, _ = read_frames(tmp_path / "seq", fps=25)
    assert taken_as_is.shape[0] == 10
    halved, info = read_frames(tmp_path / "seq", fps=5, folder_fps=10)
    assert info.fps == 10 and halved.shape[0] == 5
    np.testing.assert_array_equal(halved, source[[0, 2, 4, 6, 8]])


def test_frame_folder_of_different_sizes_is_an_error(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    cv2.imwrite(str(folder / "1.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(folder / "2.png"), np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(VideoError, match="2.png"):
        read_frames(folder)


def test_gif_gives_all_frames(shared):
    frames, info = read_frames(shared / "samples" / "v_CricketShot_g04_c01_rgb.gif", fps=25)
    assert frames.shape == (79, 224, 224, 3) and frames.dtype == np.uint8


def test_natural_key():
    names = ["pic10.png", "pic2.png", "Pic1.jpg", "pic1a.png", "pic100.bmp"]
    assert sorted(names, key=natural_key) == ["Pic1.jpg", "pic1a.png", "pic2.png", "pic10.png", "pic100.bmp"]


def test_resize_short_side_and_crop(shared):
    frames, _ = read_frames(shared / "videos" / "video_90.mov", fps=None)
    resized = resize_short_side(frames, 256)
    assert resized.shape == (3, round(568 * 256 / 320), 256, 3)
    expected = cv2.resize(frames[1], (256, round(568 * 256 / 320)), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resized[1], expected)
    crop = center_crop(resized, 224)
    top = (resized.shape[1] - 224) // 2
    np.testing.assert_array_equal(crop, resized[:, top : top + 224, 16:240])
    with pytest.raises(ValueError, match="224"):
        center_crop(frames[:, :100], 224)


def test_to_model_range():
    x = to_model_range(np.array([0, 51, 255], dtype=np.uint8))
    np.testing.assert_allclose(x, [-1.0, 51 / 255 * 2 - 1, 1.0], atol=1e-7)
    assert x.dtype == np.float32

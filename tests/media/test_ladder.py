import pytest

from media.ladder import DEFAULT_LADDER, plan_ladder


def test_default_ladder_is_one_table_top_first() -> None:
    assert [r.name for r in DEFAULT_LADDER] == ["1080p", "720p", "540p", "360p", "240p"]
    rates = [r.video_kbps for r in DEFAULT_LADDER]
    assert rates == sorted(rates, reverse=True)


def test_a_1080p_source_gets_every_rung() -> None:
    assert [(r.name, r.width, r.height) for r in plan_ladder(1920, 1080)] == [
        ("1080p", 1920, 1080),
        ("720p", 1280, 720),
        ("540p", 960, 540),
        ("360p", 640, 360),
        ("240p", 426, 240),
    ]


@pytest.mark.parametrize(
    ("w", "h", "names"),
    [
        (1280, 720, ["720p", "540p", "360p", "240p"]),
        (1000, 562, ["540p", "360p", "240p"]),
        (640, 360, ["360p", "240p"]),
    ],
)
def test_rungs_above_the_source_are_dropped(w: int, h: int, names: list[str]) -> None:
    rungs = plan_ladder(w, h)
    assert [r.name for r in rungs] == names
    assert all(r.height <= h and r.width <= w for r in rungs)


def test_other_aspect_ratios_keep_their_shape_with_even_sizes() -> None:
    rungs = plan_ladder(1440, 1080)  # 4:3
    assert (rungs[0].width, rungs[0].height) == (1440, 1080)
    assert all(r.width % 2 == 0 and r.height % 2 == 0 for r in rungs)
    assert all(abs(r.width / r.height - 4 / 3) < 0.02 for r in rungs)


def test_a_source_below_the_bottom_rung_keeps_its_own_size() -> None:
    [rung] = plan_ladder(320, 180)
    assert (rung.name, rung.width, rung.height) == ("180p", 320, 180)
    assert rung.video_kbps == DEFAULT_LADDER[-1].video_kbps


def test_encoder_threads_follow_each_rungs_share_of_the_pixels() -> None:
    from media.transcode import encoder_threads

    assert encoder_threads(plan_ladder(1920, 1080), cores=2) == [2, 1, 1, 1, 1]
    eight = encoder_threads(plan_ladder(1920, 1080), cores=8)
    assert eight == sorted(eight, reverse=True) and eight[0] >= 8 and eight[-1] == 1

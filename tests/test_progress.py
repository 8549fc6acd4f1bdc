import io

from repro.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(61.4) == "1:01"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(float("nan")) == "?"


def test_plain_lines_when_not_a_terminal():
    clock, out = Clock(), io.StringIO()
    with Progress(100, "prepare", stream=out, interval=5, clock=clock) as p:
        clock.t += 2
        p.update(20)  # first update always prints
        clock.t += 1
        p.update(10)  # within the interval: silent
        clock.t += 5
        p.update(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0] == "prepare: 20/100 img (20%), 10.0 img/s, ETA 0:08"
    assert lines[1].startswith("prepare: 40/100 img (40%)")
    assert lines[2].endswith("0:08 in all")


def test_one_redrawn_line_on_a_terminal():
    clock, out = Clock(), Tty()
    p = Progress(10, "train", unit="batch", stream=out, clock=clock)
    for _ in range(10):
        clock.t += 1
        p.update()
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 11
    assert "10/10 batch (100%), 1.0 batch/s, 0:10 in all" in text


def test_unknown_total():
    clock, out = Clock(), io.StringIO()
    with Progress(None, stream=out, interval=0, clock=clock) as p:
        clock.t += 4
        p.update(8)
    assert out.getvalue().splitlines()[0] == "8 img, 2.0 img/s"

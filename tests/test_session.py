"""The session window's logic without GTK or GIMP (``nst_session``): takes asked for
while another paints wait their turn, results are shown one or two at a time, and
*Add as layer* adds exactly the results shown that are not in the image yet."""

import nst_session
from nst_recipe import Painting

from nst_contract.knobs import QUICK_LOOK

SETTINGS = {"style_strength": 0.5, "iterations": 200, "max_size": 0,
            "preserve_colors": False, "seed": 0, "detail": "auto", "device": "auto"}
MOSAIC, CANDY = Painting("mosaic.jpg"), Painting("candy.png")


def result(number):
    return {"event": "result", "shape": [4, 4, 3], "payload": bytes([number]) * 192}


def test_takes_paint_one_after_another_in_the_order_asked():
    session = nst_session.Session()
    first = session.ask(SETTINGS, "style", MOSAIC)
    assert session.next_to_paint() is first
    first.state = nst_session.PAINTING
    quick = session.ask({**SETTINGS, "style_strength": 0.7}, "style", CANDY, quick=True)
    full = session.ask(SETTINGS, "style", CANDY)
    assert session.next_to_paint() is None and session.waiting == 2  # one paints at a time
    assert quick.settings == {**SETTINGS, "style_strength": 0.7, **QUICK_LOOK}
    assert quick.label == "candy 0.7 · quick look" and full.label == "candy 0.5"
    session.ended(first, result(1))
    assert session.chosen == [1] and session.next_to_paint() is quick
    quick.state = nst_session.PAINTING
    session.ended(quick, error="out of memory")
    assert quick.state == nst_session.FAILED and session.next_to_paint() is full
    full.state = nst_session.PAINTING
    session.ended(full, cancelled=True)
    assert full.state == nst_session.CANCELLED and session.next_to_paint() is None
    assert [t.number for t in session.results()] == [1]


def test_one_result_shown_or_two_side_by_side_and_only_those_are_added():
    session = nst_session.Session()
    takes = [session.ask({**SETTINGS, "style_strength": s}, "style", MOSAIC)
             for s in (0.3, 0.5, 0.7)]
    for take in takes:
        take.state = nst_session.PAINTING
        session.ended(take, result(take.number))
    assert session.chosen == [3]  # the newest result is shown as it arrives
    session.choose(1)
    assert [t.number for t in session.shown()] == [1]
    session.choose(2, compare=True)
    assert [t.number for t in session.shown()] == [1, 2]
    session.choose(3, compare=True)  # a third: the older of the two makes way
    assert [t.number for t in session.shown()] == [2, 3]
    session.choose(3, compare=True)  # Ctrl+click on one shown: it goes
    assert [t.number for t in session.shown()] == [2]
    session.choose(9)  # not a result: nothing changes
    assert session.chosen == [2]
    session.choose(3, compare=True)
    assert session.to_add() == [takes[1], takes[2]] and session.unadded() == 3
    for take in session.to_add():
        take.added = True
    assert session.to_add() == [] and session.unadded() == 1  # each added once


def test_finish_this_one_is_a_full_run_of_the_quick_look_from_its_result():
    session = nst_session.Session()
    dialog = session.ask(SETTINGS, "style", MOSAIC)
    quick = session.ask({**SETTINGS, "style_strength": 0.8, "preserve_colors": True},
                        "candy-style", CANDY, quick=True)
    quick.started = {"event": "started", "max_size": 256}
    finished = session.finish(quick, dialog.settings)
    assert finished.finishes is quick and finished.worked_to == 0 and quick.worked_to == 256
    assert finished.settings == {**SETTINGS, "style_strength": 0.8, "preserve_colors": True}
    assert (finished.style, finished.painting) == ("candy-style", CANDY)
    assert finished.label == "candy 0.8 (photo's colours) · finished" and not finished.quick

"""What the engine and the GIMP plug-in agree on, written once.

* ``knobs`` — every setting of a run: default, type, range, choices, help text;
* ``layers`` — VGG19's layer names (which the settings name);
* ``plan`` — the coarse-to-fine scales, tiles, automatic size and memory model;
* ``errors`` — the kinds of failure and their exit codes;
* ``wire`` — protocol 3: framing, ceilings, deadlines and heartbeats.

Standard library only: GIMP's own Python, which has neither torch nor numpy,
imports it beside the plug-in (``install.sh`` puts a copy there), and the engine
imports it from its environment.
"""

"""The whole schedule and the built-in demo.

* `schedule` - Q1, K1, Q2... with the baselines, evaluated after every phase;
* `commands` - a recipe as the stage-by-stage commands the schedule runs;
* `report` - the results table (JSON, markdown, PNG, rich);
* `demo` - a small DISC-layout benchmark built offline, and the shortened schedule on it.
"""

"""The miniature lab: a toy world in which the three effects show on a CPU in minutes.

`world` writes the toy world; `plan` says which stages and variants run and fills in the lab's
shipped configs; `run` runs them per seed (seeds in parallel processes); `results` holds what a seed
measured, typed; `report` reads the effects from those numbers and writes lab.json/md/png.
"""

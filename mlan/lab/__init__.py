"""The miniature lab: a toy world in which the papers' effects (E1-E6) are measured on a CPU in minutes.

`world` writes the toy world; `plan` says which stages and variants run and fills in the lab's
shipped configs; `run` runs them per seed (seeds, and a seed's stage-2 variants, in parallel processes:
`processes`); `results` holds what a seed measured, typed; `report` reads the effects from those
numbers and writes lab.json/md/png.
"""

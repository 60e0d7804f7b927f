"""The miniature lab: a toy world in which the three effects show on a CPU in minutes."""

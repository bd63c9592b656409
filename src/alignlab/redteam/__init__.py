"""alignlab.redteam: attack-success rates with CIs, attack diversity and red-teaming reports."""

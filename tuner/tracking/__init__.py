"""The MLflow glue: runs of studies, trials and final seeds, their names, and the follower that mirrors them."""

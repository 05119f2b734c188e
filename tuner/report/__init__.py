"""The report: its data from the stored studies, statistics, figures and the evidence it writes."""

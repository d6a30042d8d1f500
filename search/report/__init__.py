"""``search report``: the study on one static HTML page (``page``), with its pictures (``figures``)."""

"""Running a study: a worker opens the run (``open``), then runs trials one after another
(``lifecycle``), each sampled, trained and recorded by the ``objective`` under its heartbeat;
``workers`` starts several on one machine. Importing this package imports none of them: the
``run`` command starts its workers' fork server before the heavy imports."""

//! Mapping of runtime events onto OCSF classes, for export.

"""The framework-free core: the event registry and logging set-up; it knows no business."""

"""Request and response bodies of the API, one module per resource; routers import from their resource's module."""

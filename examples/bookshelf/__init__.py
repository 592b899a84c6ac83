"""The bookshelf reference application: a catalog of books, their stock and customer orders.

tidings.examples.bookshelf.domain    the Domain and its elements (`domain.init()` is the caller's job)
tidings.examples.bookshelf.api       the FastAPI app (`create_api(domain)`, or `app`)
tidings.examples.bookshelf.scenario  the end-to-end scenario, drivable in-process or over HTTP
"""

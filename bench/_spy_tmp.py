import time, sys
from bench.harness import REDIS_URL, scratch_database, redis_prefix, engine_for
from bench.tidings_app import build_domain, celery_app, place_order
from bench.producer import _commits_per_second
with scratch_database() as url, redis_prefix() as prefix:
    d = build_domain(url, 1); c = celery_app(d, prefix, REDIS_URL); d.drop_tables(); d.create_tables()
    for _ in range(20): place_order(d)
    print("ready", flush=True)
    t = time.time()
    while time.time() - t < 20:
        print(round(_commits_per_second(lambda: place_order(d), 800)), flush=True)
    c.pool.force_close_all(); d.dispose()

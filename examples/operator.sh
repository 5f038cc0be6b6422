export NIX_STORE_DIR=/tmp/gk-store; mkdir -p -m 0700 $NIX_STORE_DIR   # default: /gnu/store
goalkeeper hold aaa-hello bbb-hello-doc -- sleep 5 &   # a "build" holding two output locks
sleep 1; goalkeeper hold aaa-hello -- echo "got aaa-hello after the build" &   # waits for it
sleep 1; goalkeeper locks               # holders, HELD FOR (an upper bound), the waiter
goalkeeper locks --check --max-wait 0.5; echo "check: exit status $?"   # 1: waited too long
wait                                    # the build ends; the waiter runs
goalkeeper locks --json | grep -E '"(name|state)"'
# On a Guix system, for monitoring:   goalkeeper locks --db /var/guix/db/db.sqlite --check

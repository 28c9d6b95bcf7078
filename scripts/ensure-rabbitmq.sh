#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672: start it, installing it if absent.
set -euo pipefail
port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if port_open; then exit 0; fi
if ! command -v rabbitmq-server >/dev/null; then
  echo "installing rabbitmq-server with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
fi
echo "starting rabbitmq-server (with the management UI on 127.0.0.1:15672)"
rabbitmq-plugins --offline enable rabbitmq_management >/dev/null 2>&1 || true
rabbitmq-server -detached
rabbitmqctl await_startup --timeout 120 >/dev/null
for _ in $(seq 1 60); do port_open && exit 0; sleep 1; done
echo "RabbitMQ did not open 127.0.0.1:5672" >&2
exit 1

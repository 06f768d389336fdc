"""Publishes telemetry over MQTT 5 with paho-mqtt (a third-party client), as cars would.

usage: mqtt_publish.py HOST PORT PREFIX MESSAGES CARS MALFORMED [PAUSE_MS [FIRST_SEQ]]
Topic cars are PREFIX/<car>/telemetry, QoS 1, every tenth message with a W3C traceparent user
property (trace id: a random run prefix and seq + 1, span id: seq + 1). MALFORMED extra messages carry a payload that is not JSON. Prints one JSON line:
what was sent, so the test can check what arrived against it.
"""
import json
import secrets
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
messages, cars, malformed = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
pause = int(sys.argv[7]) / 1000 if len(sys.argv) > 7 else 0
first = int(sys.argv[8]) if len(sys.argv) > 8 else 0

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-publisher", protocol=mqtt.MQTTv5)
# Without a pause, publishes are pipelined (up to 10 unacknowledged, HiveMQ's default receive
# maximum), as a busy fleet's are.
client.max_inflight_messages_set(10)
client.max_queued_messages_set(0)
connected = threading.Event()
client.on_connect = lambda *_: connected.set()
client.connect(host, port)
client.loop_start()
if not connected.wait(30):
    sys.exit("no CONNACK from the MQTT broker within 30 s")
traced, sent = [], []
trace_prefix = secrets.token_hex(8)
for i in range(first, first + messages):
    car = f"car-{i % cars}"
    props = None
    if i % 10 == 0:
        props = Properties(PacketTypes.PUBLISH)
        traceparent = f"00-{trace_prefix}{i + 1:016x}-{i + 1:016x}-01"
        props.UserProperty = ("traceparent", traceparent)
        traced.append(i)
    payload = json.dumps({"seq": i, "car": car, "speed": 40.0 + i % 50})
    info = client.publish(f"{prefix}/{car}/telemetry", payload, qos=1, properties=props)
    if pause:
        info.wait_for_publish(30)
        time.sleep(pause)
    else:
        sent.append(info)
for i in range(malformed):
    sent.append(client.publish(f"{prefix}/car-bad/telemetry", b"{not json %d" % i, qos=1))
for info in sent:
    info.wait_for_publish(60)
client.loop_stop()
client.disconnect()
print(json.dumps({"messages": messages, "malformed": malformed, "traced": len(traced), "trace_prefix": trace_prefix}))

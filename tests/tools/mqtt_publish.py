"""Publishes telemetry over MQTT 5 with paho-mqtt (a third-party client), as cars would.

usage: mqtt_publish.py HOST PORT PREFIX MESSAGES CARS MALFORMED
Topic cars are PREFIX/<car>/telemetry, QoS 1, every tenth message with a W3C traceparent user
property. MALFORMED extra messages carry a payload that is not JSON. Prints one JSON line:
what was sent, so the test can check what arrived against it.
"""
import json
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
messages, cars, malformed = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-publisher", protocol=mqtt.MQTTv5)
client.connect(host, port)
client.loop_start()
traced = []
for i in range(messages):
    car = f"car-{i % cars}"
    props = None
    if i % 10 == 0:
        props = Properties(PacketTypes.PUBLISH)
        traceparent = f"00-{i + 1:032x}-{i + 1:016x}-01"
        props.UserProperty = ("traceparent", traceparent)
        traced.append(i)
    payload = json.dumps({"seq": i, "car": car, "speed": 40.0 + i % 50})
    client.publish(f"{prefix}/{car}/telemetry", payload, qos=1, properties=props).wait_for_publish(30)
for i in range(malformed):
    client.publish(f"{prefix}/car-bad/telemetry", b"{not json %d" % i, qos=1).wait_for_publish(30)
client.loop_stop()
client.disconnect()
print(json.dumps({"messages": messages, "malformed": malformed, "traced": len(traced)}))

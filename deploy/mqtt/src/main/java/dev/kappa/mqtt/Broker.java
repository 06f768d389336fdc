package dev.kappa.mqtt;

import com.hivemq.embedded.EmbeddedExtension;
import com.hivemq.embedded.EmbeddedHiveMQ;
import com.hivemq.extension.sdk.api.ExtensionMain;
import com.hivemq.extension.sdk.api.auth.SimpleAuthenticator;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthInput;
import com.hivemq.extension.sdk.api.auth.parameter.SimpleAuthOutput;
import com.hivemq.extension.sdk.api.client.parameter.Listener;
import com.hivemq.extension.sdk.api.packets.connect.ConnackReasonCode;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartOutput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopOutput;
import com.hivemq.extension.sdk.api.services.Services;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.concurrent.CountDownLatch;

/**
 * Runs HiveMQ CE embedded with the given configuration and data folders until the process is
 * stopped. Persistent sessions and queued QoS 1 messages live in the data folder, so a client
 * with a persistent session gets what was published while it was away, across broker restarts.
 *
 * <p>With a users file and a TLS port, connections to that listener must log in with a user
 * name and password from the file ({@code name:password} lines, read at every connect); the
 * plain loopback listener stays open for development.
 */
public final class Broker {
    private Broker() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 3 && args.length != 5) {
            System.err.println("usage: Broker CONFIG_FOLDER DATA_FOLDER EXTENSIONS_FOLDER [USERS_FILE TLS_PORT]");
            System.exit(64);
        }
        var builder = EmbeddedHiveMQ.builder()
                .withConfigurationFolder(Path.of(args[0]))
                .withDataFolder(Path.of(args[1]))
                .withExtensionsFolder(Path.of(args[2]));
        if (args.length == 5) {
            builder.withEmbeddedExtension(passwords(Path.of(args[3]), Integer.parseInt(args[4])));
        }
        EmbeddedHiveMQ hivemq = builder.build();
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            hivemq.stop().join();
            stopped.countDown();
        }));
        hivemq.start().join();
        System.out.println("kappa-local-mqtt: HiveMQ CE started");
        stopped.await();
    }

    private static EmbeddedExtension passwords(Path users, int securePort) {
        SimpleAuthenticator authenticator = (SimpleAuthInput input, SimpleAuthOutput output) -> {
            int port = input.getConnectionInformation().getListener().map(Listener::getPort).orElse(-1);
            if (port != securePort) {
                output.authenticateSuccessfully();
                return;
            }
            var packet = input.getConnectPacket();
            String name = packet.getUserName().orElse("");
            byte[] given = packet.getPassword().map(Broker::bytes).orElse(new byte[0]);
            if (!name.isEmpty() && knows(users, name, given)) {
                output.authenticateSuccessfully();
            } else {
                output.failAuthentication(ConnackReasonCode.BAD_USER_NAME_OR_PASSWORD,
                        "unknown user or wrong password for the TLS listener");
            }
        };
        return EmbeddedExtension.builder()
                .withId("kappa-passwords")
                .withName("Kappa local passwords")
                .withVersion("1.0.0")
                .withAuthor("kappa")
                .withPriority(1000)
                .withStartPriority(1000)
                .withExtensionMain(new ExtensionMain() {
                    @Override
                    public void extensionStart(ExtensionStartInput in, ExtensionStartOutput out) {
                        Services.securityRegistry().setAuthenticatorProvider(provider -> authenticator);
                    }

                    @Override
                    public void extensionStop(ExtensionStopInput in, ExtensionStopOutput out) {}
                })
                .build();
    }

    private static byte[] bytes(ByteBuffer buffer) {
        byte[] out = new byte[buffer.remaining()];
        buffer.duplicate().get(out);
        return out;
    }

    private static boolean knows(Path users, String name, byte[] given) {
        try {
            for (String line : Files.readAllLines(users, StandardCharsets.UTF_8)) {
                int colon = line.indexOf(':');
                if (colon > 0 && line.substring(0, colon).equals(name)) {
                    byte[] expected = line.substring(colon + 1).getBytes(StandardCharsets.UTF_8);
                    return MessageDigest.isEqual(expected, given);
                }
            }
        } catch (IOException e) {
            System.err.println("kappa-local-mqtt: cannot read " + users + ": " + e);
        }
        return false;
    }
}

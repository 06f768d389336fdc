package dev.kappa.mqtt;

import com.hivemq.embedded.EmbeddedHiveMQ;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;

/**
 * Runs HiveMQ CE embedded with the given configuration and data folders until the process is
 * stopped. Persistent sessions and queued QoS 1 messages live in the data folder, so a client
 * with a persistent session gets what was published while it was away, across broker restarts.
 */
public final class Broker {
    private Broker() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: Broker CONFIG_FOLDER DATA_FOLDER EXTENSIONS_FOLDER");
            System.exit(64);
        }
        EmbeddedHiveMQ hivemq = EmbeddedHiveMQ.builder()
                .withConfigurationFolder(Path.of(args[0]))
                .withDataFolder(Path.of(args[1]))
                .withExtensionsFolder(Path.of(args[2]))
                .build();
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            hivemq.stop().join();
            stopped.countDown();
        }));
        hivemq.start().join();
        System.out.println("kappa-local-mqtt: HiveMQ CE started");
        stopped.await();
    }
}

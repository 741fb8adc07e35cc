package dev.tally.example;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publishes order events to tally's orders topic: one JSON object per line
 * of a file (or standard input), sent unchanged, keyed by its merchant_id.
 *
 * <p>The Java client's default partitioner hashes the key with murmur2, as
 * tally's own producers do, so a merchant's events always land in the same
 * partition whoever produced them. Idempotence (the default since Kafka 3.0,
 * set here to be explicit) writes a retried record once; acks=all waits for
 * every in-sync replica.
 *
 * <pre>
 * mvn package
 * java -cp "target/classes:$(cat target/classpath.txt)" dev.tally.example.Producer \
 *     --brokers 127.0.0.1:9092 --topic orders events.ndjson
 * </pre>
 */
public final class Producer {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Producer() {}

    public static void main(String[] args) throws IOException, InterruptedException {
        String brokers = "127.0.0.1:9092";
        String topic = "orders";
        String input = "-";
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--brokers" -> brokers = args[++i];
                case "--topic" -> topic = args[++i];
                default -> input = args[i];
            }
        }
        Properties config = new Properties();
        config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        config.put(ProducerConfig.ACKS_CONFIG, "all");
        config.put(ProducerConfig.LINGER_MS_CONFIG, 5);
        config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);

        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (BufferedReader lines = reader(input);
             KafkaProducer<String, String> producer = new KafkaProducer<>(config)) {
            String line;
            while ((line = lines.readLine()) != null) {
                if (line.isBlank()) {
                    continue;
                }
                sent.add(producer.send(new ProducerRecord<>(topic, merchantKey(line), line)));
            }
            producer.flush();
        }
        int failed = 0;
        for (Future<RecordMetadata> result : sent) {
            try {
                result.get();
            } catch (ExecutionException e) {
                failed++;
                System.err.println("error: a record was refused: " + e.getCause());
            }
        }
        if (failed > 0) {
            System.exit(1);
        }
        System.out.println("published " + sent.size() + " events to " + topic);
    }

    /**
     * The line's merchant_id as the record key, or null: a line that is not
     * JSON is still sent, and tally keeps it, with its reason, in the
     * dead-letter topic.
     */
    private static String merchantKey(String line) {
        try {
            JsonNode merchant = JSON.readTree(line).get("merchant_id");
            return merchant != null && merchant.isTextual() ? merchant.asText() : null;
        } catch (JsonProcessingException e) {
            return null;
        }
    }

    private static BufferedReader reader(String input) throws IOException {
        if (input.equals("-")) {
            return new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        }
        return Files.newBufferedReader(Path.of(input), StandardCharsets.UTF_8);
    }
}

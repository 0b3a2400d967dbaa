"""The seed example: Keras code with only its imports changed, on real data.

Verses of the ten largest books of the King James Bible as TF-IDF features (1,000 words);
the model learns which book a verse comes from.

    python examples/seed_example.py            # one process
    bigtrain train examples/seed_example.py    # the same through the CLI
"""
from bigtrain.datasets import kjv_tfidf
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

(x_train, y_train), (x_test, y_test) = kjv_tfidf(num_features=1000, num_classes=10)

input_layer = Input(shape=(1000,))
hidden_layer = Dense(512, activation='relu')(input_layer)
output_layer = Dense(10, activation='softmax')(hidden_layer)
model = Model(inputs=input_layer, outputs=output_layer)
model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
model.summary()
model.fit(x_train, y_train, epochs=10, batch_size=32)

loss, accuracy = model.evaluate(x_test, y_test)
print(f"test loss {loss:.4f} - test accuracy {accuracy:.4f} "
      f"(chance is 0.10; {len(x_test)} held-out verses)")
